#!/usr/bin/env python3
"""Both ends of a bypassed (spliced) connection, for the kernel splice tests. The client opens
with a real ClientHello (Python's ssl, for SNI), which the gateway judges and replays upstream;
after it both ends speak raw bytes, so a test controls half-closes and resets exactly.

splice_peer.py server --listen IP:PORT
  Plain TCP. Per connection: reads the ClientHello record, sends "READY\\n", reads one command
  line and acts on it; prints one JSON line per connection ({"cmd", "received", "sha256",
  "error"}) once it is done. Prints "LISTENING" first. Runs until killed.
    upload N    read until EOF, then send {"sha256", "length"} of what came as a JSON line,
                then N pattern bytes, then close (the client half-closed before the answer)
    reset N     send N pattern bytes, then reset the connection
    sink        read until EOF or an error
    stream      send pattern bytes (up to 1 GiB) until an error (the client resets mid-transfer)
    echo N      read N bytes, send them back and close first (so the TIME_WAIT is here, not
                among the host's ports for dialling this address)
splice_peer.py upload IP PORT SNI UP DOWN
  Sends UP pattern bytes after "upload DOWN", half-closes, reads the answer; prints JSON
  {"sent_total", "received_total" (every byte, ClientHello and READY included), "sent_sha256",
  "reported", "received", "down_ok", "error"}.
splice_peer.py reset IP PORT SNI N
  Asks the server to reset after N bytes; prints JSON {"received", "error"}.
splice_peer.py abort IP PORT SNI N
  Sends "stream", reads N bytes of it, then resets with the rest unread; prints JSON
  {"received"}.
splice_peer.py hold IP PORT SNI SECONDS
  Sends "sink" and keeps the connection open (idle) for SECONDS; prints JSON {"held"}.
splice_peer.py many IP PORT SNI COUNT CONCURRENCY
  COUNT echo connections of 100 bytes each, at most CONCURRENCY at once; prints JSON {"ok",
  "failed", "errors"} (the first few errors).
"""
import asyncio
import hashlib
import json
import socket
import ssl
import struct
import sys
import threading
import time


def pattern(n, seed=7):
    block = bytes((i * 31 + seed) & 0xFF for i in range(65536))
    out = bytearray()
    while len(out) < n:
        out += block[: n - len(out)]
    return bytes(out)


def client_hello(sni):
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"EOF after {len(data)} of {n} bytes")
        data += chunk
    return data


def read_line(sock):
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise EOFError(f"EOF in a line after {line!r}")
        line += chunk
    return line


def read_to_end(sock):
    data, error = b"", None
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except OSError as exc:
            error = type(exc).__name__
            break
        if not chunk:
            break
        data += chunk
    return data, error


def reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def serve_one(conn):
    conn.settimeout(60)
    result = {"cmd": None, "received": 0, "sha256": None, "error": None}
    try:
        header = read_exact(conn, 5)
        read_exact(conn, struct.unpack("!H", header[3:5])[0])
        conn.sendall(b"READY\n")
        cmd, _, arg = read_line(conn).decode().strip().partition(" ")
        result["cmd"] = cmd
        if cmd == "upload":
            data, error = read_to_end(conn)
            result.update(received=len(data), sha256=hashlib.sha256(data).hexdigest(), error=error)
            answer = {"sha256": result["sha256"], "length": len(data)}
            conn.sendall(json.dumps(answer).encode() + b"\n" + pattern(int(arg), 3))
            conn.close()
        elif cmd == "reset":
            conn.sendall(pattern(int(arg), 5))
            reset(conn)
        elif cmd == "sink":
            data, error = read_to_end(conn)
            result.update(received=len(data), error=error)
            conn.close()
        elif cmd == "stream":
            chunk = pattern(1 << 16, 11)
            try:
                for _ in range(1 << 14):
                    conn.sendall(chunk)
            except OSError as exc:
                result["error"] = type(exc).__name__
            conn.close()
        elif cmd == "echo":
            data = read_exact(conn, int(arg))
            result["received"] = len(data)
            conn.sendall(data)
            conn.close()
    except Exception as exc:  # reported, never hidden
        result["error"] = repr(exc)
        conn.close()
    return result


def serve(listen):
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, int(port)))
    listener.listen(1024)
    print("LISTENING", flush=True)
    lock = threading.Lock()

    def one(conn):
        result = serve_one(conn)
        with lock:
            print(json.dumps(result), flush=True)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=one, args=(conn,), daemon=True).start()


def connect(ip, port, sni):
    """Returns the socket and the bytes sent and received so far."""
    sock = socket.create_connection((ip, int(port)), timeout=30)
    hello = client_hello(sni)
    sock.sendall(hello)
    if read_line(sock) != b"READY\n":
        raise RuntimeError("no READY")
    return sock, len(hello), len(b"READY\n")


def upload(ip, port, sni, up, down):
    sock, sent, received = connect(ip, port, sni)
    command, body = f"upload {down}\n".encode(), pattern(int(up), 1)
    sock.sendall(command + body)
    sock.shutdown(socket.SHUT_WR)
    data, error = read_to_end(sock)
    line, _, rest = data.partition(b"\n")
    return {
        "sent_total": sent + len(command) + len(body),
        "received_total": received + len(data),
        "sent_sha256": hashlib.sha256(body).hexdigest(),
        "reported": json.loads(line),
        "received": len(rest),
        "down_ok": rest == pattern(int(down), 3),
        "error": error,
    }


def reset_after(ip, port, sni, n):
    sock, _, _ = connect(ip, port, sni)
    sock.sendall(f"reset {n}\n".encode())
    data, error = read_to_end(sock)
    return {"received": len(data), "error": error}


def abort(ip, port, sni, n):
    sock, _, _ = connect(ip, port, sni)
    sock.sendall(b"stream\n")
    read_exact(sock, int(n))
    # The gateway's side fills up with what this client does not read.
    time.sleep(0.5)
    reset(sock)
    return {"received": int(n)}


def hold(ip, port, sni, seconds):
    sock, _, _ = connect(ip, port, sni)
    sock.sendall(b"sink\n")
    time.sleep(float(seconds))
    sock.close()
    return {"held": float(seconds)}


async def one_echo(ip, port, hello, payload):
    reader, writer = await asyncio.open_connection(ip, int(port))
    try:
        writer.write(hello)
        if await reader.readline() != b"READY\n":
            raise RuntimeError("no READY")
        writer.write(f"echo {len(payload)}\n".encode() + payload)
        await writer.drain()
        got = await reader.read()
        if got != payload:
            raise RuntimeError(f"echo of {len(got)} bytes differs")
    finally:
        writer.close()


async def many(ip, port, sni, count, concurrency):
    hello, payload = client_hello(sni), pattern(100, 9)
    limit = asyncio.Semaphore(int(concurrency))
    ok, errors = 0, []

    async def run():
        nonlocal ok
        async with limit:
            try:
                await asyncio.wait_for(one_echo(ip, port, hello, payload), 30)
                ok += 1
            except Exception as exc:
                errors.append(repr(exc))

    await asyncio.gather(*(run() for _ in range(int(count))))
    return {"ok": ok, "failed": len(errors), "errors": errors[:5]}


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "server":
        serve(args[1])
        return
    if cmd == "upload":
        result = upload(*args)
    elif cmd == "reset":
        result = reset_after(*args)
    elif cmd == "abort":
        result = abort(*args)
    elif cmd == "hold":
        result = hold(*args)
    elif cmd == "many":
        result = asyncio.run(many(*args))
    else:
        raise SystemExit(f"unknown command {cmd}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
