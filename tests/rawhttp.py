"""A bare HTTP server for the payment provider's client to meet what a real provider may
answer — any status, any bytes, or nothing — on a free local port, with no framework in
between to tidy the answer up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serving(handle: Handler) -> AsyncIterator[str]:
    """A server on a free port of 127.0.0.1 answering every connection with ``handle``:
    its base URL (``http://127.0.0.1:<port>``)."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


def answering(status: int, body: bytes) -> Handler:
    """A handler for ``serving`` that reads a request and answers it ``status`` with
    ``body`` as JSON, then closes the connection."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(
            f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    return answer
