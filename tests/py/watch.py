#!/usr/bin/env python3
"""Packet watcher run inside a test host's namespace: counts the TCP SYNs and UDP datagrams
that arrive for one port on any interface, so a test can assert that a refused connect never
put a packet on the wire.

watch.py PORT      prints READY once capturing, then on SIGTERM (or after 120 s) one JSON line
                   {"syn": N, "udp": M}
"""
import json
import signal
import socket
import struct
import sys

ETH_P_ALL = 0x0003


def count(frame, port, counts):
    ethertype = struct.unpack("!H", frame[12:14])[0]
    if ethertype == 0x0800:
        ihl = (frame[14] & 0x0F) * 4
        proto = frame[23]
        transport = frame[14 + ihl:]
    elif ethertype == 0x86DD:
        proto = frame[20]
        transport = frame[54:]
    else:
        return
    if len(transport) < 4 or struct.unpack("!H", transport[2:4])[0] != port:
        return
    if proto == 6 and len(transport) >= 14 and transport[13] & 0x02:
        counts["syn"] += 1
    elif proto == 17:
        counts["udp"] += 1


def main():
    port = int(sys.argv[1])
    counts = {"syn": 0, "udp": 0}
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.settimeout(0.2)

    def report(*_):
        print(json.dumps(counts), flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, report)
    signal.alarm(120)
    signal.signal(signal.SIGALRM, report)
    print("READY", flush=True)
    while True:
        try:
            frame, (_, pkttype, *_rest) = sock.recvfrom(65535)
        except socket.timeout:
            continue
        if pkttype != socket.PACKET_OUTGOING:
            count(frame, port, counts)


if __name__ == "__main__":
    main()
