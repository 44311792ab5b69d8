"""An upload sink for the 1 GB upload: reads a request body as it arrives, answers its length.

Run as `python -m bench.sink PORT`; HTTP/1.1 with Content-Length or chunked bodies.
"""

from __future__ import annotations

import asyncio
import sys


async def _read_body(reader: asyncio.StreamReader, headers: dict[bytes, bytes]) -> int:
    if b"content-length" in headers:
        left = int(headers[b"content-length"])
        total = left
        while left:
            chunk = await reader.read(min(left, 1 << 20))
            if not chunk:
                raise ConnectionError("short body")
            left -= len(chunk)
        return total
    total = 0
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                return total
            await reader.readexactly(size + 2)
            total += size
    return total


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            headers: dict[bytes, bytes] = {}
            while True:
                raw = await reader.readline()
                if raw in (b"\r\n", b"\n", b""):
                    break
                name, _, value = raw.partition(b":")
                headers[name.strip().lower()] = value.strip()
            total = _read_body(reader, headers)
            body = b'{"length": %d}\n' % await total
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                % len(body)
                + body
            )
            await writer.drain()
    except (ConnectionError, ValueError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(_serve, "127.0.0.1", port, limit=1 << 20)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
