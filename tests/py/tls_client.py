#!/usr/bin/env python3
"""Raw HTTP/1.1 over TLS, for what curl will not do: requests pipelined on one connection, and
a chunked body whose chunks the test chooses (each sent on its own, so a placeholder can be
split across them).

tls_client.py pipeline IP PORT SNI CAFILE COUNT PATH [HEADER ...]
  Sends COUNT GET requests back to back before reading, then reads COUNT responses; prints a
  JSON list of {"status", "body"}.
tls_client.py chunked IP PORT SNI CAFILE PATH CHUNK [CHUNK ...]
  POSTs the chunks as a chunked body, one write (and a pause) per chunk; prints {"status",
  "body"}.
"""
import json
import socket
import ssl
import sys
import time


def connect(ip, port, sni, cafile):
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["http/1.1"])
    sock = socket.create_connection((ip, int(port)), timeout=15)
    return context.wrap_socket(sock, server_hostname=sni)


def read_response(stream):
    status_line = stream.readline().decode()
    status = int(status_line.split()[1])
    length, chunked = 0, False
    while True:
        line = stream.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode().partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
        if name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        body = b""
        while True:
            size = int(stream.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                stream.readline()
                break
            body += stream.read(size)
            stream.readline()
    else:
        body = stream.read(length)
    return {"status": status, "body": body.decode(errors="replace")}


def pipeline(ip, port, sni, cafile, count, path, headers):
    tls = connect(ip, port, sni, cafile)
    extra = "".join(f"{h}\r\n" for h in headers)
    request = f"GET {path} HTTP/1.1\r\nHost: {sni}\r\n{extra}\r\n".encode()
    tls.sendall(request * int(count))
    stream = tls.makefile("rb")
    return [read_response(stream) for _ in range(int(count))]


def chunked(ip, port, sni, cafile, path, chunks):
    tls = connect(ip, port, sni, cafile)
    head = f"POST {path} HTTP/1.1\r\nHost: {sni}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    tls.sendall(head.encode())
    for chunk in chunks:
        data = chunk.encode()
        tls.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        time.sleep(0.05)
    tls.sendall(b"0\r\n\r\n")
    return read_response(tls.makefile("rb"))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "pipeline":
        result = pipeline(*args[:6], args[6:])
    elif cmd == "chunked":
        result = chunked(*args[:5], args[5:])
    else:
        result = {"error": f"unknown command {cmd}"}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
