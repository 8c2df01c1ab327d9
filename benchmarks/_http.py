"""A minimal HTTP/1.1 keep-alive client on a raw socket (127.0.0.1 only).

Small and predictable on purpose: no pooling, no redirects followed, no
decoding, so that what is timed is the server, not a client library.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def build_request(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    host: str = "127.0.0.1",
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    return status, headers


class Conn:
    """One keep-alive connection to 127.0.0.1:port; reconnects when closed."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = b""

    def _connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.buf = s, b""
        return s

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _read_until(self, s: socket.socket, marker: bytes) -> bytes:
        while marker not in self.buf:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk
        head, _, self.buf = self.buf.partition(marker)
        return head

    def _read_n(self, s: socket.socket, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> Reply:
        raw = build_request(method, path, body, headers)
        for attempt in (1, 2):
            s = self.sock or self._connect()
            try:
                s.sendall(raw)
                head = self._read_until(s, b"\r\n\r\n")
                break
            except (ConnectionError, OSError):
                self.close()
                if attempt == 2:
                    raise
        status, hdrs = parse_head(head)
        if "content-length" in hdrs:
            data = self._read_n(s, int(hdrs["content-length"]))
        elif hdrs.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self._read_until(s, b"\r\n").split(b";")[0], 16)
                parts.append(self._read_n(s, size + 2)[:size])
                if size == 0:
                    break
            data = b"".join(parts)
        else:
            data = b""
        if hdrs.get("connection", "").lower() == "close":
            self.close()
        return Reply(status, hdrs, data)
