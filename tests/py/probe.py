#!/usr/bin/env python3
"""Policy probe run inside a sandbox: tries one thing and prints one JSON line with what the
kernel said, so a test can assert the exact errno.

probe.py tcp HOST PORT            connect() a TCP socket
probe.py udp HOST PORT [--reply]  sendto() one datagram (and wait up to 3 s for a reply)
probe.py udp-connect HOST PORT    connect() a UDP socket, then send()
probe.py fastopen HOST PORT       sendto(MSG_FASTOPEN): a TCP connect carried by a send
probe.py socket raw|ping|ping6|sctp   create such a socket
probe.py ws HOST PORT PATH HOSTNAME   WebSocket handshake over plain HTTP, then one echoed frame

Output: {"ok": true, ...} or {"ok": false, "errno": "EPERM", "error": "..."}.
"""
import base64
import errno
import json
import os
import socket
import sys


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def failed(exc):
    name = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else type(exc).__name__
    return {"ok": False, "errno": name, "error": str(exc)}


def tcp(host, port):
    sock = socket.socket(family(host), socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.connect((host, port))
        return {"ok": True}
    except OSError as exc:
        return failed(exc)
    finally:
        sock.close()


def udp(host, port, reply):
    sock = socket.socket(family(host), socket.SOCK_DGRAM)
    sock.settimeout(3)
    try:
        sock.sendto(b"probe", (host, port))
        if reply:
            data, _ = sock.recvfrom(2048)
            return {"ok": True, "reply": data.decode(errors="replace")}
        return {"ok": True}
    except OSError as exc:
        return failed(exc)
    finally:
        sock.close()


def udp_connect(host, port):
    sock = socket.socket(family(host), socket.SOCK_DGRAM)
    try:
        sock.connect((host, port))
        sock.send(b"probe")
        return {"ok": True}
    except OSError as exc:
        return failed(exc)
    finally:
        sock.close()


def fastopen(host, port):
    sock = socket.socket(family(host), socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.sendto(b"GET / HTTP/1.0\r\n\r\n", socket.MSG_FASTOPEN, (host, port))
        return {"ok": True}
    except OSError as exc:
        return failed(exc)
    finally:
        sock.close()


def make_socket(kind):
    kinds = {
        "raw": (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
        "ping": (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP),
        "ping6": (socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6),
        "sctp": (socket.AF_INET, socket.SOCK_STREAM, 132),
    }
    try:
        socket.socket(*kinds[kind]).close()
        return {"ok": True}
    except OSError as exc:
        return failed(exc)


def websocket(host, port, path, hostname):
    key = base64.b64encode(os.urandom(16)).decode()
    sock = socket.create_connection((host, port), timeout=10)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {hostname}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    sock.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            return {"ok": False, "error": "closed before the 101", "received": head.decode(errors="replace")}
        head += chunk
    status = head.split(b"\r\n", 1)[0].decode()
    if " 101 " not in status + " ":
        return {"ok": False, "error": "no 101", "status": status}
    payload = b"hello through the gateway"
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    rest = head.split(b"\r\n\r\n", 1)[1]
    while len(rest) < 2 + len(payload):
        chunk = sock.recv(4096)
        if not chunk:
            break
        rest += chunk
    echoed = rest[2:2 + len(payload)]
    sock.close()
    return {"ok": echoed == payload, "status": status, "echoed": echoed.decode(errors="replace")}


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "tcp":
        result = tcp(args[0], int(args[1]))
    elif cmd == "udp":
        result = udp(args[0], int(args[1]), "--reply" in args)
    elif cmd == "udp-connect":
        result = udp_connect(args[0], int(args[1]))
    elif cmd == "fastopen":
        result = fastopen(args[0], int(args[1]))
    elif cmd == "socket":
        result = make_socket(args[0])
    elif cmd == "ws":
        result = websocket(args[0], int(args[1]), args[2], args[3])
    else:
        result = {"ok": False, "error": f"unknown command {cmd}"}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
