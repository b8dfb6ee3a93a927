#!/usr/bin/env python3
"""DNS client run inside a sandbox: sends one query the way a stub resolver would and prints
one JSON line with the answer and the addresses the kernel reported, so a test can check that
the reply seems to come from the server it asked.

dns_query.py udp SERVER NAME [A|AAAA]          sendto() + recvfrom() on an unconnected socket
dns_query.py udp-connect SERVER NAME [A|AAAA]  connect() + send() + recvfrom() + getpeername()
dns_query.py udp6-mapped SERVER NAME [A|AAAA]  an AF_INET6 socket sending to ::ffff:SERVER
dns_query.py tcp SERVER NAME [A|AAAA]          connect() + length-prefixed query + getpeername()

SERVER is an IPv4 or IPv6 address (port 53). Output:
{"ok": true, "rcode": 0, "tc": false, "answers": ["192.0.2.1", ...], "cnames": ["b.test", ...],
 "authorities": 0, "from": "ADDR:PORT", "peer": ...}
or {"ok": false, "errno": "EPERM", "error": "..."}. "answers" are the A and AAAA records of the
answer section, "cnames" its CNAME targets in order, "authorities" the authority section's
record count (the SOA of a negative answer), "tc" the truncation flag.
"""
import errno
import json
import random
import socket
import struct
import sys

TYPES = {"A": 1, "AAAA": 28}


def fmt_addr(addr):
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def failed(exc):
    name = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else type(exc).__name__
    return {"ok": False, "errno": name, "error": str(exc)}


def query(name, qtype):
    qid = random.randrange(1 << 16)
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)  # RD, one question
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
    return qid, header + labels + b"\0" + struct.pack("!HH", TYPES[qtype], 1)


def skip_name(msg, pos):
    while True:
        length = msg[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        pos += 1 + length


def read_name(msg, pos):
    """The name at pos, following compression pointers (at most 64 of them)."""
    labels = []
    for _ in range(64):
        length = msg[pos]
        if length == 0:
            break
        if length & 0xC0 == 0xC0:
            pos = ((length & 0x3F) << 8) | msg[pos + 1]
            continue
        labels.append(msg[pos + 1:pos + 1 + length].decode("ascii", "replace"))
        pos += 1 + length
    return ".".join(labels)


def parse(msg, qid):
    rid, flags, qd, an, ns, _ = struct.unpack("!HHHHHH", msg[:12])
    if rid != qid:
        return {"ok": False, "error": f"reply id {rid} is not the query's {qid}"}
    pos = 12
    for _ in range(qd):
        pos = skip_name(msg, pos) + 4
    answers = []
    cnames = []
    for _ in range(an):
        pos = skip_name(msg, pos)
        rtype, _, ttl, length = struct.unpack("!HHIH", msg[pos:pos + 10])
        pos += 10
        data = msg[pos:pos + length]
        pos += length
        if rtype == 1:
            answers.append(socket.inet_ntop(socket.AF_INET, data))
        elif rtype == 28:
            answers.append(socket.inet_ntop(socket.AF_INET6, data))
        elif rtype == 5:
            cnames.append(read_name(msg, pos - length))
    return {
        "ok": True,
        "rcode": flags & 0x0F,
        "tc": bool(flags & 0x0200),
        "answers": answers,
        "cnames": cnames,
        "authorities": ns,
    }


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def udp(server, name, qtype, connect, mapped=False):
    fam = socket.AF_INET6 if mapped else family(server)
    dst = ("::ffff:" + server if mapped else server, 53)
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    sock.settimeout(5)
    qid, msg = query(name, qtype)
    try:
        peer = None
        if connect:
            sock.connect(dst)
            peer = fmt_addr(sock.getpeername())
            sock.send(msg)
        else:
            sock.sendto(msg, dst)
        data, source = sock.recvfrom(4096)
    except OSError as exc:
        return failed(exc)
    finally:
        sock.close()
    result = parse(data, qid)
    result["from"] = fmt_addr(source)
    if peer is not None:
        result["peer"] = peer
    return result


def tcp(server, name, qtype):
    sock = socket.socket(family(server), socket.SOCK_STREAM)
    sock.settimeout(5)
    qid, msg = query(name, qtype)
    try:
        sock.connect((server, 53))
        peer = fmt_addr(sock.getpeername())
        sock.sendall(struct.pack("!H", len(msg)) + msg)
        data = b""
        while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
            chunk = sock.recv(4096)
            if not chunk:
                return {"ok": False, "error": "closed before the whole answer"}
            data += chunk
    except OSError as exc:
        return failed(exc)
    finally:
        sock.close()
    result = parse(data[2:], qid)
    result["peer"] = peer
    return result


def main():
    cmd, server, name = sys.argv[1], sys.argv[2], sys.argv[3]
    qtype = sys.argv[4] if len(sys.argv) > 4 else "A"
    if cmd == "udp":
        result = udp(server, name, qtype, connect=False)
    elif cmd == "udp-connect":
        result = udp(server, name, qtype, connect=True)
    elif cmd == "udp6-mapped":
        result = udp(server, name, qtype, connect=False, mapped=True)
    elif cmd == "tcp":
        result = tcp(server, name, qtype)
    else:
        result = {"ok": False, "error": f"unknown command {cmd}"}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
