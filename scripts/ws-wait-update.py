#!/usr/bin/env python3
"""Waits for one update on a hostpulse WebSocket topic (stdlib only: no
websocat or websockets package on CI). Used by scripts/deb-test.sh,
scripts/static-agent-test.sh and scripts/measure-upgrade-gap.sh.

    ws-wait-update.py HOST:PORT TOPIC TIMEOUT_SECS [--follow]

Connects to ws://HOST:PORT/ws (JSON encoding, no compression offered),
subscribes to TOPIC, and exits 0 printing the first update whose `topic` is
TOPIC and that carries a `payload`; exits 1 on timeout, close or error.

With --follow it prints every such update, one JSON object per line as it
arrives, until TIMEOUT_SECS have passed (or it is killed), and exits 0 if
there was at least one.
"""
import base64
import json
import os
import socket
import struct
import sys
import time


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf


def send_text(sock, text):
    data = text.encode()
    mask = os.urandom(4)
    header = bytes([0x81])
    if len(data) < 126:
        header += bytes([0x80 | len(data)])
    else:
        header += bytes([0x80 | 126]) + struct.pack(">H", len(data))
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    sock.sendall(header + mask + masked)


def recv_frame(sock):
    b0, b1 = recv_exact(sock, 2)
    opcode, length = b0 & 0x0F, b1 & 0x7F
    if length == 126:
        (length,) = struct.unpack(">H", recv_exact(sock, 2))
    elif length == 127:
        (length,) = struct.unpack(">Q", recv_exact(sock, 8))
    return opcode, recv_exact(sock, length)


def main():
    follow = "--follow" in sys.argv[4:]
    addr, topic, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    seen = 0
    deadline = time.monotonic() + timeout
    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += recv_exact(sock, 1)
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status:
        print(f"handshake refused: {status.decode(errors='replace')}", file=sys.stderr)
        return 1
    send_text(sock, json.dumps({"action": "subscribe", "topic": topic}))
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            if follow and seen:
                return 0
            print(f"no update on {topic} within {timeout} s", file=sys.stderr)
            return 1
        sock.settimeout(left)
        try:
            opcode, data = recv_frame(sock)
        except socket.timeout:
            continue
        if opcode == 0x8:
            print(f"closed by the server: {data!r}", file=sys.stderr)
            return 1
        if opcode == 0x9:  # ping: answer with a masked pong
            mask = os.urandom(4)
            body = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            sock.sendall(bytes([0x8A, 0x80 | len(data)]) + mask + body)
            continue
        if opcode != 0x1:
            continue
        msg = json.loads(data)
        if msg.get("topic") == topic and "payload" in msg:
            print(json.dumps(msg), flush=True)
            if not follow:
                return 0
            seen += 1


if __name__ == "__main__":
    sys.exit(main())
