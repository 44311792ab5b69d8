"""A recording upstream on a raw socket: it logs each request line and header line exactly as received.

It answers by path:
  /slow...           waits `slow_seconds` before answering (504 tests)
  /cookies...        several Set-Cookie headers, one of them trying to set the gateway's cookie
  /download?size=N   N deterministic bytes, chunked, generated as they are sent
  /upload...         reads the body as it arrives, answers its length and sha256
  /status/NNN        answers with that status
  anything else      200 JSON echo of what arrived
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

BLOCK = bytes(range(256)) * 256  # 64 KiB pattern for downloads


def pattern_bytes(size: int):
    """The deterministic download body, in 64 KiB pieces."""
    sent = 0
    while sent < size:
        piece = BLOCK[: min(len(BLOCK), size - sent)]
        sent += len(piece)
        yield piece


@dataclass
class Recorded:
    """One request as the upstream saw it."""

    request_line: bytes
    header_lines: list[bytes]
    body: bytes = b""
    body_length: int = 0
    body_sha256: str = ""

    @property
    def method(self) -> str:
        return self.request_line.split(b" ")[0].decode()

    @property
    def target(self) -> str:
        return self.request_line.split(b" ")[1].decode("latin-1")

    @property
    def headers(self) -> list[tuple[str, str]]:
        out = []
        for line in self.header_lines:
            name, _, value = line.partition(b":")
            out.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        return out

    def header(self, name: str) -> list[str]:
        """Every value of a header, compared case-insensitively by exact name."""
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}


@dataclass
class RecordingUpstream:
    """A threaded HTTP/1.1 server on 127.0.0.1 that records everything it receives."""

    slow_seconds: float = 5.0
    requests: list[Recorded] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.raw.clear()

    def last(self) -> Recorded:
        deadline = time.monotonic() + 5
        while not self.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.requests[-1]

    def close(self) -> None:
        self._stop.set()
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            pass
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self._stop.is_set():
                conn.close()
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            while True:
                line = reader.readline(65536)
                if not line:
                    return
                request_line = line.rstrip(b"\r\n")
                header_lines = []
                while True:
                    hline = reader.readline(65536)
                    if hline in (b"\r\n", b"\n", b""):
                        break
                    header_lines.append(hline.rstrip(b"\r\n"))
                rec = Recorded(request_line, header_lines)
                with self._lock:
                    self.requests.append(rec)
                    self.raw.append(request_line + b"\n" + b"\n".join(header_lines))
                keep = self._respond(conn, reader, rec)
                if not keep:
                    return
        except (OSError, ValueError):
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _read_body(self, reader, rec: Recorded, keep_body: bool) -> None:
        digest = hashlib.sha256()
        length = 0
        kept = bytearray()
        te = [v.lower() for v in rec.header("transfer-encoding")]
        cl = rec.header("content-length")
        if te and "chunked" in te[-1]:
            while True:
                size_line = reader.readline(1024)
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while reader.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                remaining = size
                while remaining:
                    piece = reader.read(min(remaining, 1 << 20))
                    if not piece:
                        raise ValueError("short chunk")
                    digest.update(piece)
                    length += len(piece)
                    if keep_body:
                        kept += piece
                    remaining -= len(piece)
                reader.readline(16)
        elif cl:
            remaining = int(cl[0])
            while remaining:
                piece = reader.read(min(remaining, 1 << 20))
                if not piece:
                    raise ValueError("short body")
                digest.update(piece)
                length += len(piece)
                if keep_body:
                    kept += piece
                remaining -= len(piece)
        rec.body = bytes(kept)
        rec.body_length = length
        rec.body_sha256 = digest.hexdigest()

    def _respond(self, conn: socket.socket, reader, rec: Recorded) -> bool:
        parts = urlsplit(rec.target)
        path = parts.path
        self._read_body(reader, rec, keep_body=not path.startswith("/upload"))
        if path.startswith("/slow"):
            time.sleep(self.slow_seconds)
        if path.startswith("/download"):
            size = int(parse_qs(parts.query).get("size", ["0"])[0])
            head = b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            conn.sendall(head)
            for piece in pattern_bytes(size):
                conn.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            conn.sendall(b"0\r\n\r\n")
            return True
        status = 200
        extra: list[tuple[str, str]] = []
        if path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
        if path.startswith("/cookies"):
            extra = [
                ("Set-Cookie", "a=1; Path=/"),
                ("Set-Cookie", "b=2; Path=/; HttpOnly"),
                ("Set-Cookie", "gw_session=evil; Path=/"),
                ("Set-Cookie", "__Host-gw_session=evil; Path=/; Secure"),
                ("Set-Cookie", "c=3"),
            ]
        if path.startswith("/upload"):
            body = json.dumps({"length": rec.body_length, "sha256": rec.body_sha256}).encode()
        else:
            body = json.dumps(
                {
                    "request_line": rec.request_line.decode("latin-1"),
                    "headers": rec.headers,
                    "body": rec.body.decode("latin-1"),
                }
            ).encode()
        lines = [
            f"HTTP/1.1 {status} X",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
        ]
        lines += [f"{k}: {v}" for k, v in extra]
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        return True
