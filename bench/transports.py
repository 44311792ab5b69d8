"""The transports the gateway was measured with before choosing its own (bench only).

Each adapter offers what gateway.proxy.Forward uses of gateway.upstream_pool.UpstreamPool:
`send(method, target, headers, body, content_length, timeout)` returning a response with
`status_code`, raw `headers`, `at_end`, `aiter_raw()` and `aclose()`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import httpx

from gateway.proxy.client import errors

# each client's exception classes -> ours, so that Forward handles them as the pool's (as
# httpx's own transports map their backend's errors); the nearest class in the MRO wins
_FROM_HTTPX: dict[type[BaseException], type[errors.UpstreamError]] = {
    httpx.ConnectTimeout: errors.ConnectTimeout,
    httpx.ReadTimeout: errors.ReadTimeout,
    httpx.WriteTimeout: errors.WriteTimeout,
    httpx.TimeoutException: errors.UpstreamTimeout,  # PoolTimeout: the pool has no such wait
    httpx.ConnectError: errors.ConnectFailed,
    httpx.ReadError: errors.ReadFailed,
    httpx.WriteError: errors.WriteFailed,
    httpx.RemoteProtocolError: errors.ProtocolError,
    httpx.HTTPError: errors.UpstreamError,
}


def _aiohttp_errors() -> dict[type[BaseException], type[errors.UpstreamError]]:
    import aiohttp

    return {
        aiohttp.ConnectionTimeoutError: errors.ConnectTimeout,
        aiohttp.ServerTimeoutError: errors.ReadTimeout,
        TimeoutError: errors.UpstreamTimeout,
        aiohttp.ClientConnectorError: errors.ConnectFailed,
        aiohttp.ServerDisconnectedError: errors.ReadFailed,
        aiohttp.ClientPayloadError: errors.ProtocolError,
        aiohttp.ClientResponseError: errors.ProtocolError,
        aiohttp.ClientError: errors.UpstreamError,
    }


@contextlib.contextmanager
def _mapped(table: dict[type[BaseException], type[errors.UpstreamError]]) -> Iterator[None]:
    """Raise the client's exceptions as ours (the cause kept); others pass unchanged."""
    try:
        yield
    except Exception as exc:
        for cls in type(exc).__mro__:
            ours = table.get(cls)
            if ours is not None:
                raise ours(str(exc) or cls.__name__) from exc
        raise


async def _body(chunks: AsyncIterator[bytes], table) -> AsyncIterator[bytes]:
    with _mapped(table):
        async for chunk in chunks:
            yield chunk


class _Response:
    def __init__(self, status: int, headers, chunks: AsyncIterator[bytes], close) -> None:
        self.status_code = status
        self.headers = headers
        self.at_end = False
        self._chunks = chunks
        self._close = close

    def aiter_raw(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def aclose(self) -> None:
        result = self._close()
        if result is not None:
            await result


class HttpxPool:
    """httpx.AsyncClient as the gateway first used it (optionally over another transport)."""

    def __init__(self, url: str, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            follow_redirects=False,
            trust_env=False,
            transport=transport,
        )
        self.client.headers.clear()
        self.base = httpx.URL(url)

    async def send(self, method, target, headers, body=None, content_length=None, timeout=30.0):
        request = httpx.Request(
            method,
            self.base.copy_with(raw_path=target),
            headers=headers,
            content=body,
            extensions={"timeout": httpx.Timeout(timeout).as_dict()},
        )
        with _mapped(_FROM_HTTPX):
            response = await self.client.send(request, stream=True)
        chunks = _body(response.aiter_raw(), _FROM_HTTPX)
        return _Response(response.status_code, response.headers.raw, chunks, response.aclose)

    async def aclose(self) -> None:
        await self.client.aclose()


def httpx_over_aiohttp(url: str) -> HttpxPool:
    """httpx's API over the httpx-aiohttp transport."""
    from httpx_aiohttp import AiohttpTransport

    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    return HttpxPool(url, AiohttpTransport(trust_env=False, limits=limits))


class AiohttpPool:
    """aiohttp.ClientSession directly."""

    def __init__(self, url: str) -> None:
        self.origin = url.rstrip("/").split("/", 3)
        self.origin = "/".join(self.origin[:3])
        self.session = None
        self.errors = _aiohttp_errors()

    async def send(self, method, target, headers, body=None, content_length=None, timeout=30.0):
        import aiohttp
        from yarl import URL

        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
                trust_env=False,
            )
        with _mapped(self.errors):
            response = await self.session.request(
                method,
                URL(self.origin + target.decode("latin-1"), encoded=True),
                headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
                data=body,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
            )
        chunks = _body(response.content.iter_any(), self.errors)
        return _Response(response.status, response.raw_headers, chunks, response.release)

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()


TRANSPORTS = {
    "httpx": HttpxPool,
    "httpx-aiohttp": httpx_over_aiohttp,
    "aiohttp": AiohttpPool,
}
