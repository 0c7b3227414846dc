"""The HTTP server protocol every process runs: uvicorn's httptools protocol, whose writes
of one event-loop step go out in one system call.

uvicorn writes a response's head as soon as the app sends ``http.response.start`` and its
body when the app sends ``http.response.body``: two ``send()`` calls for the usual answer,
each a trip through the kernel's TCP stack and a wake-up of the client. Apps send both in
the same step of the loop (the gateway relaying a service's answer, Starlette's responses),
so holding the writes until the step ends turns them into one: the gateway answered 15-20 %
more proxied requests per second (docs/benchmarks.md, "Gateway proxy"). A streamed body's
chunks still go out as they come, one write per step. Named by
``--http shared.server:CoalescingHttpToolsProtocol`` (``qunbuy.platform.SERVER_OPTIONS``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["CoalescingHttpToolsProtocol"]


class _CoalescingTransport:
    """A transport whose writes are held until the current step of the loop ends, then
    written together; closing or aborting first writes (or drops) what is held."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._held is None:
            self._held = [data]
            self._loop.call_soon(self._flush)
        else:
            self._held.append(data)

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        wrapped = _CoalescingTransport(transport, self.loop)
        super().connection_made(wrapped)  # type: ignore[arg-type]
