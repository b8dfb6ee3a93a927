#!/usr/bin/env python3
"""Helper for regenerate.sh (run that, not this): the capture listener and the fixture check.

  regenerate.py listen DIR PORT_FILE LIFETIME_SECS
      Listens on 127.0.0.1 on a free port (written to PORT_FILE once listening). For each
      accepted connection it reads the TLS record(s) carrying the ClientHello (5-byte record
      header, then the record; more records only if the handshake message is longer than the
      first one), saves them as DIR/conn-N.bin and closes. Exits after LIFETIME_SECS.

  regenerate.py check FILE SNI ALPN [tls12|tls13]
      Parses FILE and checks that it is exactly one handshake record holding just a ClientHello,
      with SNI (raw bytes as sent, "-" for none) and ALPN offer (comma-separated, "-" for none)
      as given. The optional last argument checks supported_versions (tls12: absent; tls13: offers
      TLS 1.3 only). Prints a one-line summary; exits 1 with the reason on a mismatch.
"""

import os
import socket
import sys
import time

RECORD_HEADER = 5
HANDSHAKE = 22
CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43
EXT_PADDING = 21
READ_TIMEOUT = 5.0
MAX_HELLO = 64 * 1024


def recv_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def read_hello_records(conn):
    """The record(s) carrying the first handshake message, byte for byte as received."""
    data = b""
    fragments = b""
    while True:
        header = recv_exact(conn, RECORD_HEADER)
        length = int.from_bytes(header[3:5], "big")
        data += header + recv_exact(conn, length)
        if header[0] != HANDSHAKE:
            return data  # not a handshake record: keep it as is, the check will say so
        fragments += data[-length:] if length else b""
        if len(fragments) >= 4:
            need = 4 + int.from_bytes(fragments[1:4], "big")
            if len(fragments) >= need or need > MAX_HELLO:
                return data


def listen(out_dir, port_file, lifetime):
    deadline = time.monotonic() + lifetime
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        tmp = port_file + ".part"
        with open(tmp, "w") as f:
            f.write(f"{srv.getsockname()[1]}\n")
        os.replace(tmp, port_file)
        seq = 0
        while (left := deadline - time.monotonic()) > 0:
            srv.settimeout(left)
            try:
                conn, peer = srv.accept()
            except socket.timeout:
                break
            seq += 1
            with conn:
                conn.settimeout(READ_TIMEOUT)
                try:
                    data = read_hello_records(conn)
                except (OSError, EOFError) as e:
                    print(f"listener: connection {seq} from {peer[0]}:{peer[1]}: {e}", file=sys.stderr)
                    data = None
                if data is not None:
                    path = os.path.join(out_dir, f"conn-{seq:03}.bin")
                    with open(path + ".part", "wb") as f:
                        f.write(data)
                    os.replace(path + ".part", path)  # visible before the client sees the close
                else:
                    open(os.path.join(out_dir, f"conn-{seq:03}.failed"), "w").close()
    print("listener: lifetime over, exiting", file=sys.stderr)


class Bad(Exception):
    pass


class Reader:
    def __init__(self, data, what):
        self.data, self.pos, self.what = data, 0, what

    def take(self, n, what):
        if self.pos + n > len(self.data):
            raise Bad(f"{self.what}: truncated {what}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self, n, what):
        return int.from_bytes(self.take(n, what), "big")

    def vec(self, len_bytes, what):
        return Reader(self.take(self.int(len_bytes, what + " length"), what), what)

    def done(self):
        return self.pos == len(self.data)


def parse(data):
    """Returns a dict describing the hello; raises Bad unless it is one record, just the hello."""
    if len(data) < RECORD_HEADER:
        raise Bad(f"only {len(data)} bytes")
    if data[0] != HANDSHAKE:
        raise Bad(f"record type {data[0]}, not a handshake (22)")
    rec_len = int.from_bytes(data[3:5], "big")
    if RECORD_HEADER + rec_len != len(data):
        raise Bad(f"{len(data)} bytes but the first record is {RECORD_HEADER + rec_len}: "
                  "not exactly one record")
    body = Reader(data[RECORD_HEADER:], "record")
    if body.int(1, "handshake type") != CLIENT_HELLO:
        raise Bad("handshake message is not a ClientHello")
    hello = body.vec(3, "ClientHello")
    if not body.done():
        raise Bad("data after the ClientHello in its record")
    legacy_version = hello.int(2, "version")
    hello.take(32, "random")
    hello.vec(1, "session id")
    suites = hello.vec(2, "cipher suites")
    hello.vec(1, "compression methods")
    info = {
        "record_version": int.from_bytes(data[1:3], "big"),
        "hello_version": legacy_version,
        "suites": len(suites.data) // 2,
        "exts": [],
        "sni": None,
        "alpn": [],
        "versions": None,
    }
    if hello.done():
        return info
    exts = hello.vec(2, "extensions")
    if not hello.done():
        raise Bad("data after the extensions")
    while not exts.done():
        ext_type = exts.int(2, "extension type")
        ext = exts.vec(2, f"extension {ext_type}")
        info["exts"].append(ext_type)
        if ext_type == EXT_SERVER_NAME:
            names = ext.vec(2, "server name list")
            while not names.done():
                name_type = names.int(1, "name type")
                name = names.vec(2, "host name").data
                if name_type == 0:
                    info["sni"] = name.decode("ascii", "backslashreplace")
        elif ext_type == EXT_ALPN:
            protos = ext.vec(2, "ALPN list")
            while not protos.done():
                info["alpn"].append(protos.vec(1, "protocol").data.decode("ascii", "backslashreplace"))
        elif ext_type == EXT_SUPPORTED_VERSIONS:
            versions = ext.vec(1, "supported versions")
            info["versions"] = [versions.int(2, "version") for _ in range(len(versions.data) // 2)]
    return info


def version_name(v):
    return {0x0301: "1.0", 0x0302: "1.1", 0x0303: "1.2", 0x0304: "1.3"}.get(v, f"{v:#06x}")


def check(path, want_sni, want_alpn, want_versions=None):
    name = os.path.basename(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        info = parse(data)
        want_sni = None if want_sni == "-" else want_sni
        want_alpn = [] if want_alpn == "-" else want_alpn.split(",")
        if info["sni"] != want_sni:
            raise Bad(f"SNI {info['sni']!r}, table says {want_sni!r}")
        if info["alpn"] != want_alpn:
            raise Bad(f"ALPN {info['alpn']}, table says {want_alpn}")
        if want_versions == "tls12" and info["versions"] is not None:
            raise Bad(f"supported_versions present ({info['versions']}), table says TLS 1.2 only")
        if want_versions == "tls13" and info["versions"] != [0x0304]:
            raise Bad(f"supported_versions {info['versions']}, expected TLS 1.3 only")
    except Bad as e:
        print(f"{name}: {e}", file=sys.stderr)
        return False
    versions = "-" if info["versions"] is None else "/".join(map(version_name, info["versions"]))
    print(f"{name:32} {len(data):4} bytes, 1 record, {len(info['exts']):2} extensions"
          f"{' (padded)' if EXT_PADDING in info['exts'] else ''}, supported_versions {versions}, "
          f"SNI {info['sni'] or '(none)'}, ALPN {','.join(info['alpn']) or '(none)'}")
    return True


def main(argv):
    if len(argv) == 5 and argv[1] == "listen":
        listen(argv[2], argv[3], float(argv[4]))
        return 0
    if len(argv) in (5, 6) and argv[1] == "check":
        return 0 if check(*argv[2:]) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
