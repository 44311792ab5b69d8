"""Bodies stream through the gateway both ways: 100 MB up and down, byte-identical, small RSS."""

from __future__ import annotations

import hashlib
import threading

from tests.conftest import Gateway
from tests.upstream import pattern_bytes

SIZE = 100 * 1024 * 1024
RSS_BUDGET_KIB = 50 * 1024


class PeakRss:
    """Samples the gateway's RSS while a transfer runs."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.start = gateway.rss_kib()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.gateway.rss_kib())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_kib(self) -> int:
        return self.peak - self.start


def _warm(client) -> None:
    # one small transfer each way first, so pools and buffers exist before we measure
    client.post("/upload", content=b"x" * 1024)
    client.get("/download", params={"size": 1024})


def test_100mb_upload_streams_byte_identical(gateway: Gateway):
    client = gateway.login("alice")
    _warm(client)
    expected = hashlib.sha256()
    for piece in pattern_bytes(SIZE):
        expected.update(piece)

    def body():
        yield from pattern_bytes(SIZE)

    with PeakRss(gateway) as rss:
        response = client.post(
            "/upload", content=body(), headers={"content-length": str(SIZE)}, timeout=120
        )
    assert response.status_code == 200, response.text
    assert response.json() == {"length": SIZE, "sha256": expected.hexdigest()}
    assert rss.growth_kib < RSS_BUDGET_KIB, f"RSS grew by {rss.growth_kib} KiB"


def test_100mb_chunked_upload_streams(gateway: Gateway):
    client = gateway.login("alice")

    def body():
        yield from pattern_bytes(SIZE)

    with PeakRss(gateway) as rss:
        response = client.post("/upload", content=body(), timeout=120)
    assert response.status_code == 200
    assert response.json()["length"] == SIZE
    assert rss.growth_kib < RSS_BUDGET_KIB, f"RSS grew by {rss.growth_kib} KiB"


def test_100mb_download_streams_byte_identical(gateway: Gateway):
    client = gateway.login("alice")
    _warm(client)
    expected = hashlib.sha256()
    for piece in pattern_bytes(SIZE):
        expected.update(piece)
    got = hashlib.sha256()
    total = 0
    with PeakRss(gateway) as rss:
        with client.stream("GET", "/download", params={"size": SIZE}, timeout=120) as response:
            assert response.status_code == 200
            for chunk in response.iter_raw():
                got.update(chunk)
                total += len(chunk)
    assert total == SIZE
    assert got.hexdigest() == expected.hexdigest()
    assert rss.growth_kib < RSS_BUDGET_KIB, f"RSS grew by {rss.growth_kib} KiB"
