#!/usr/bin/env python3
"""Test upstream: an HTTPS server that tells each client who answered and who it saw.

GET /            -> JSON {"name", "peer", "local", "alpn", "host", "conn", "session_reused"}
GET /headers     -> JSON {"name", "path", "headers"} of the request as received
GET /bytes/N     -> N pseudo-random bytes (deterministic, for hash checks)
GET /ws          -> a WebSocket handshake, then every frame echoed back
POST /sha256     -> JSON {"sha256", "length", "chunked"} of the request body (Content-Length or
                    chunked)
POST /echo       -> the request body, as received
--udp ADDR:PORT  -> a UDP service answering each datagram with "echo:" + the datagram
--record FILE    -> every request appended to FILE as a JSON line {"method", "path", "headers",
                    "body"} (body decoded as Latin-1, at most 1 MiB): what the upstream received
GET /PATH        -> with --static DIR, the file DIR/PATH when there is one (query ignored), e.g.
                    a bare git repository for git's dumb HTTP protocol

Prints "READY" on stdout once every listener is bound. Runs until killed.
"""
import argparse
import base64
import hashlib
import http.server
import json
import os
import random
import socket
import ssl
import sys
import struct
import threading
import time
import urllib.parse


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_name_label = "upstream"
    static_dir = None
    record_file = None
    record_lock = threading.Lock()
    connections = 0
    lock = threading.Lock()

    def setup(self):
        super().setup()
        with Handler.lock:
            Handler.connections += 1
            self.conn_id = Handler.connections

    def log_message(self, fmt, *args):  # keep stdout for READY and connection records
        pass

    def _send(self, status, body, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _static_file(self):
        """The file under --static the request path names, or None."""
        if self.static_dir is None:
            return None
        root = os.path.realpath(self.static_dir)
        relative = urllib.parse.unquote(self.path.split("?", 1)[0]).lstrip("/")
        path = os.path.realpath(os.path.join(root, relative))
        if not path.startswith(root + os.sep) or not os.path.isfile(path):
            return None
        return path

    def record(self, body=b""):
        if self.record_file is None:
            return
        line = json.dumps({
            "method": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body": body[: 1 << 20].decode("latin-1"),
        })
        with Handler.record_lock, open(self.record_file, "a") as f:
            f.write(line + "\n")

    def do_GET(self):
        self.record()
        static = self._static_file()
        if static is not None:
            with open(static, "rb") as f:
                self._send(200, f.read(), "application/octet-stream")
            return
        if self.path == "/reset":
            # Promise 1 MiB, send 64 KiB, then reset the connection.
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 20))
            self.end_headers()
            self.wfile.write(b"x" * 65536)
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if self.path == "/hang":
            time.sleep(120)
            return
        if self.path == "/ws":
            self.websocket()
            return
        if self.path.startswith("/headers"):
            body = json.dumps({
                "name": self.server_name_label,
                "path": self.path,
                "headers": [[k, v] for k, v in self.headers.items()],
            }).encode() + b"\n"
            self._send(200, body)
            return
        if self.path.startswith("/bytes/"):
            n = int(self.path.split("/")[2])
            body = random.Random(n).randbytes(n)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            # Computed here, compared by the test with what the client received.
            self.send_header("X-Content-Sha256", hashlib.sha256(body).hexdigest())
            self.end_headers()
            self.wfile.write(body)
            return
        peer = self.client_address
        local = self.connection.getsockname()
        alpn = self.connection.selected_alpn_protocol() if hasattr(self.connection, "selected_alpn_protocol") else None
        version = self.connection.version() if hasattr(self.connection, "version") else None
        reused = getattr(self.connection, "session_reused", None)
        body = json.dumps({
            "name": self.server_name_label,
            "tls_version": version,
            "peer": fmt_addr(peer),
            "local": fmt_addr(local),
            "alpn": alpn,
            "host": self.headers.get("Host"),
            "conn": self.conn_id,
            "session_reused": reused,
        }).encode() + b"\n"
        self._send(200, body)

    def websocket(self):
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        ).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                break
            length = head[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if head[0] & 0x0F == 8:
                break
            frame = bytes([head[0], len(data)]) if len(data) < 126 else bytes([head[0], 126]) + struct.pack("!H", len(data))
            self.wfile.write(frame + data)
            self.wfile.flush()
        self.close_connection = True

    def do_POST(self):
        digest = Recorder()
        chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
        received = self.read_chunked(digest) if chunked else self.read_length(digest)
        self.record(bytes(digest.kept))
        if self.path.startswith("/echo"):
            self._send(200, bytes(digest.kept), "application/octet-stream")
            return
        body = json.dumps({"sha256": digest.hexdigest(), "length": received, "chunked": chunked})
        self._send(200, body.encode() + b"\n")

    def read_length(self, digest):
        remaining = int(self.headers.get("Content-Length", "0"))
        received = 0
        while remaining:
            chunk = self.rfile.read(min(remaining, 65536))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
            received += len(chunk)
        return received

    def read_chunked(self, digest):
        received = 0
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return received
            data = self.rfile.read(size)
            digest.update(data)
            received += len(data)
            self.rfile.readline()


class Recorder:
    """A sha256 that also keeps the first MiB of what it hashed."""

    def __init__(self):
        self.sha = hashlib.sha256()
        self.kept = bytearray()

    def update(self, data):
        self.sha.update(data)
        if len(self.kept) < 1 << 20:
            self.kept += data[: (1 << 20) - len(self.kept)]

    def hexdigest(self):
        return self.sha.hexdigest()


def fmt_addr(addr):
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def handle_error(self, request, client_address):
        pass  # resets are part of the tests


def blackhole(listen):
    """Accepts connections and never reads or writes: an upstream that never answers."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(256)
    held = []

    def run():
        while True:
            conn, _ = sock.accept()
            held.append(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def udp_echo(listen):
    """Answers each datagram with "echo:" + the datagram (a stand-in resolver)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, int(port)))

    def run():
        while True:
            data, peer = sock.recvfrom(2048)
            sock.sendto(b"echo:" + data, peer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def serve(listen, context, name, static_dir=None):
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    handler = type("H", (Handler,), {"server_name_label": name, "static_dir": static_dir})
    server_cls = type("S", (Server,), {"address_family": family})
    server = server_cls((host, int(port)), handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--listen", action="append", default=[], help="ADDR:PORT, repeatable")
    parser.add_argument("--plain", action="append", default=[], help="ADDR:PORT served without TLS")
    parser.add_argument("--tls12-only", action="store_true", help="refuse TLS 1.3")
    parser.add_argument("--blackhole", action="append", default=[], help="ADDR:PORT that accepts and never answers")
    parser.add_argument("--udp", action="append", default=[], help="ADDR:PORT answering datagrams")
    parser.add_argument("--record", metavar="FILE", help="append every request to FILE (JSON lines)")
    parser.add_argument("--static", metavar="DIR", help="also serve the files under DIR (GET only)")
    args = parser.parse_args()
    Handler.record_file = args.record

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    context.set_alpn_protocols(["http/1.1"])
    if args.tls12_only:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    threads = [serve(listen, context, args.name, args.static) for listen in args.listen or []]
    threads += [serve(listen, None, args.name, args.static) for listen in args.plain]
    threads += [blackhole(listen) for listen in args.blackhole]
    threads += [udp_echo(listen) for listen in args.udp]
    print("READY", flush=True)
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    sys.exit(main())
