"""Send bytes exactly as written: httpx normalizes requests, attacks must not be normalized."""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> RawResponse:
    """Send one raw request on a fresh connection and read one response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_response(sock)


def read_response(sock: socket.socket) -> RawResponse:
    reader = sock.makefile("rb")
    status_line = reader.readline()
    if not status_line:
        raise ConnectionError("connection closed without a response")
    status = int(status_line.split(b" ")[1])
    headers = []
    while True:
        line = reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    lengths = [v for k, v in headers if k.lower() == "content-length"]
    chunked = any(k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in headers)
    body = b""
    if lengths:
        body = reader.read(int(lengths[0]))
    elif chunked:
        while True:
            size = int(reader.readline().split(b";")[0].strip(), 16)
            if size == 0:
                reader.readline()
                break
            body += reader.read(size)
            reader.readline()
    return RawResponse(status, headers, body)


def get(port: int, target: str, headers: dict[str, str] | None = None) -> RawResponse:
    """A GET with the target sent byte for byte."""
    lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return raw_request(port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
