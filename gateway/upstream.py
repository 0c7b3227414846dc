"""The gateway's client for the services: HTTP/1.1 on pooled keep-alive connections, answers
parsed by httptools (the parser uvicorn serves with).

A proxy needs little of a general HTTP client: no cookies, redirects, compression, proxies,
URL joining or header normalisation, which it must all turn off anyway. aiohttp's client,
which the gateway used before, did that work on every request and was a third of the
gateway's CPU under load (docs/benchmarks.md, "Gateway proxy"); what is left here is the
protocol itself:

- A request goes out in one write (head and a small body together). The headers are the
  client's bytes as they came; this module adds ``Host`` and the body's framing.
- Connections are pooled per service: at most ``limit`` in use at once (others wait, up to
  the read timeout, for one to come back), idle ones reused newest first and dropped after
  ``keepalive`` seconds (below the services' own keep-alive, so that the service never
  closes a connection a request is just going out on).
- ``read_timeout`` bounds the silence while an answer is awaited; a reader that stops reading
  (a slow client) pauses the connection instead (flow control both ways).

Errors are :class:`UpstreamError` (answered 502), :class:`UpstreamTimeout` (504), and two
kinds the caller may retry: :class:`UpstreamUnreachable` (no connection: nothing was sent)
and :class:`UpstreamGone` (the connection closed before any byte of an answer came back).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlsplit

import httptools

__all__ = [
    "Response",
    "Upstream",
    "UpstreamError",
    "UpstreamGone",
    "UpstreamPool",
    "UpstreamTimeout",
    "UpstreamUnreachable",
]

# A service's answer head larger than this is not an answer.
_MAX_HEAD = 256 * 1024
# Body bytes held for a reader before the service's connection stops being read.
_HIGH_WATER = 256 * 1024


class UpstreamError(Exception):
    """The service gave no valid answer: refused, broke off, or sent something not HTTP."""


class UpstreamTimeout(UpstreamError):
    """The service was silent for longer than the read timeout, or no connection came free."""


class UpstreamUnreachable(UpstreamError):
    """No connection could be opened: the request was not sent."""


class UpstreamGone(UpstreamError):
    """The connection closed before any byte of an answer: the service may or may not have
    acted on the request."""


class Response:
    """A service's answer. Its connection is held until :meth:`release`."""

    __slots__ = (
        "_buffered",
        "_chunked",
        "_chunks",
        "_conn",
        "_done",
        "_error",
        "_head_done",
        "_head_only",
        "_interim",
        "_received",
        "_released",
        "_streaming",
        "_writer",
        "content_length",
        "raw_headers",
        "status",
    )

    def __init__(self, conn: _Connection, head_only: bool) -> None:
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self._conn = conn
        self._head_only = head_only
        self._head_done = False
        self._interim = False
        self._done = False
        self._error: UpstreamError | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._chunked = False
        self._received = 0
        self._released = False
        self._streaming = False
        self._writer: asyncio.Task[None] | None = None

    async def read(self) -> bytes:
        """The whole body."""
        while not self._done:
            if self._error is not None:
                raise self._error
            await self._conn.wait()
        body = b"".join(self._chunks)
        self._chunks.clear()
        return body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises :class:`UpstreamError` if it is cut short. Only
        here is the service's connection paused while the reader is behind."""
        conn = self._conn
        self._streaming = True
        while True:
            if self._chunks:
                data = b"".join(self._chunks)
                self._chunks.clear()
                self._buffered = 0
                conn.resume()
                yield data
            elif self._done:
                return
            elif self._error is not None:
                raise self._error
            else:
                await conn.wait()

    def release(self) -> None:
        """Gives the connection back: to the pool when the answer was read to its end and the
        service keeps the connection open, closed otherwise. Safe to call twice."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        if self._writer is not None:
            _stop(conn, self._writer)
        reusable = self._done and self._error is None and not self._head_only and conn.keep_alive
        conn.finish(reusable)


class _Connection(asyncio.Protocol):
    """One connection to a service, carrying one request at a time."""

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream
        self._loop = upstream.loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.keep_alive = False
        self.idle_since = 0.0
        self._response: Response | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._reading_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._last_activity = 0.0
        self._aborted = False
        self.waiting_for_client = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        response = self._response
        if response is None or response._done:
            # Bytes nobody asked for: the connection is in an unknown state.
            self._abort()
            return
        self._last_activity = self._loop.time()
        response._received += len(data)
        if not response._head_done and response._received > _MAX_HEAD:
            self._fail(UpstreamError("the answer's head is too large"))
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(UpstreamError(f"not a valid HTTP answer: {exc}"))

    def eof_received(self) -> bool | None:
        return False  # close; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        self._upstream.lost(self)
        response = self._response
        if response is not None and not response._done and response._error is None:
            if (
                response._head_done
                and response.content_length is None
                and not response._chunked
                and exc is None
                and not self._aborted
            ):
                # A body delimited by the connection's end has ended (RFC 9112 §6.3); a reset
                # or our own abort is not its end.
                response._done = True
                self.keep_alive = False
            elif response._received == 0:
                response._error = UpstreamGone("the service closed the connection")
            else:
                response._error = UpstreamError("the service's answer was cut short")
        self._wake()
        self._release_drain()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._release_drain()

    # httptools callbacks

    def on_message_begin(self) -> None:
        response = self._response
        if response is None or response._done:
            # A second answer in the same read, to a request never sent: refused (the parser
            # raises, the connection is dropped; the first answer stands).
            raise UpstreamError("an answer nobody asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        response = self._response
        assert response is not None
        if response._interim:
            return
        response.raw_headers.append((name, value))
        lower = name.lower()
        if lower == b"content-length":
            try:
                response.content_length = int(value)
            except ValueError:
                response.content_length = None
        elif lower == b"transfer-encoding" and b"chunked" in value.lower():
            response._chunked = True

    def on_headers_complete(self) -> None:
        response = self._response
        assert response is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the final one follows.
            response._interim = True
            response.raw_headers.clear()
            response.content_length = None
            response._chunked = False
            return
        response.status = status
        response._head_done = True
        self.keep_alive = self._parser.should_keep_alive()
        if response._head_only:
            # No body follows a HEAD's answer, whatever its Content-Length says; the parser
            # does not know the request was a HEAD, so the connection is not used again.
            response._done = True
            self._cancel_timer()
        self._wake()

    def on_body(self, body: bytes) -> None:
        response = self._response
        assert response is not None
        if response._interim or response._done:
            return
        response._chunks.append(body)
        response._buffered += len(body)
        if (
            response._streaming
            and response._buffered > _HIGH_WATER
            and not self._reading_paused
            and self.transport
        ):
            self._reading_paused = True
            # The service's keep-alive clock started when it had written the answer, which
            # may be long before the reader gets to its end: not reused (the 1 s margin
            # between the two keep-alives would not hold).
            self.keep_alive = False
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        response = self._response
        assert response is not None
        if response._interim:
            response._interim = False
            return
        response._done = True
        self.idle_since = self._loop.time()  # the keep-alive clock starts with the answer's end
        self._cancel_timer()
        self._wake()

    # used by Upstream and Response

    def start(self, response: Response, head: bytes) -> None:
        assert self.transport is not None
        self._response = response
        self._last_activity = self._loop.time()
        self._timer = self._loop.call_at(
            self._last_activity + self._upstream.read_timeout, self._check_timeout
        )
        self.transport.write(head)

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    async def drain(self) -> None:
        if self._writing_paused and not self.closed:
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        self.touch()

    async def wait(self) -> None:
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def body_sent(self, writer: asyncio.Task[None]) -> None:
        """The request body's task ended: wakes whoever waits for the head (it may have
        failed); its outcome is read there."""
        if not writer.cancelled():
            writer.exception()  # retrieved: an error after the head came is not logged
        self._wake()

    def touch(self) -> None:
        """Something went out: the service's silence is counted from now."""
        self._last_activity = self._loop.time()

    def resume(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.touch()
            self.transport.resume_reading()

    def finish(self, reusable: bool) -> None:
        self._response = None
        self._cancel_timer()
        if reusable and not self.closed:
            self.resume()
            self._upstream.put_back(self)
        else:
            self._abort()
            self._upstream.put_back(None)

    def close(self) -> None:
        self._abort()

    # internals

    def _release_drain(self) -> None:
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        response = self._response
        if response is not None and response._error is None and not response._done:
            response._error = error
        self._abort()
        self._wake()

    def _abort(self) -> None:
        self.keep_alive = False
        self._aborted = True
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.closed = True

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_timeout(self) -> None:
        self._timer = None
        response = self._response
        if response is None or response._done:
            return
        now = self._loop.time()
        deadline = self._last_activity + self._upstream.read_timeout
        if self._reading_paused or self.waiting_for_client:
            # Waiting for our own reader, or for the client's body, not for the service.
            # (Paused writing is the service not reading the request: its silence.)
            deadline = now + self._upstream.read_timeout
        if now >= deadline:
            self._fail(UpstreamTimeout("the service did not answer in time"))
        else:
            self._timer = self._loop.call_at(deadline, self._check_timeout)


class Upstream:
    """A service's pool of connections (``http://host:port`` or ``https://``)."""

    def __init__(
        self,
        base_url: str,
        *,
        limit: int,
        connect_timeout: float,
        read_timeout: float,
        keepalive: float,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) base URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._host = parts.hostname
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        self._host_header = parts.netloc.encode("idna" if not parts.netloc.isascii() else "ascii")
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive = keepalive
        self._ssl = ssl.create_default_context() if self._tls else None
        self._slots: asyncio.Semaphore | None = None
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(self.limit)
        self._closed = False

    def close(self) -> None:
        self._closed = True
        for conn in list(self._all):
            conn.close()
        self._idle.clear()

    @property
    def connections(self) -> int:
        """Open connections, in use or idle."""
        return len(self._all)

    async def request(
        self,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterator[bytes] | None = None,
        content_length: int | None = None,
        *,
        fresh: bool = False,
    ) -> Response:
        """Sends a request and returns the answer once its head has come; the caller reads
        the body and then calls :meth:`Response.release`.

        ``target`` is the path and query as they go on the request line; ``headers`` must not
        carry ``Host`` or the body's framing, which are set here: ``Content-Length`` for a
        bytes body, and for a streamed one ``content_length`` when known, chunked otherwise.
        ``fresh`` opens a new connection instead of taking an idle one: for a request sent
        again, since whatever failed the first attempt may have closed the idle ones too. On
        :class:`UpstreamGone` the idle connections are dropped for the same reason (a request
        that may not be sent twice must not meet the next one).
        """
        slots = await self._acquire()
        conn: _Connection | None = None
        response: Response | None = None
        try:
            conn = await self._connection(fresh)
            response = Response(conn, head_only=method == "HEAD")
            writer = _send(
                conn, response, self._host_header, method, target, headers, body, content_length
            )
            await _await_head(conn, response, writer)
        except BaseException as exc:
            if isinstance(exc, UpstreamGone):
                self._drop_idle()
            if response is not None:
                response._error = response._error or UpstreamError("the request was abandoned")
                response.release()
            elif conn is not None:
                conn.finish(False)
            else:
                slots.release()
            raise
        return response

    async def _acquire(self) -> asyncio.Semaphore:
        """A slot: one of ``limit`` connections in use, waited for up to the read timeout."""
        slots = self._slots
        if slots is None or self._closed:
            raise UpstreamUnreachable("the pool is closed")
        if not slots.locked():
            await slots.acquire()
            return slots
        try:
            async with asyncio.timeout(self.read_timeout):
                await slots.acquire()
        except TimeoutError:
            raise UpstreamTimeout("no connection came free in time") from None
        return slots

    async def get(self, path: str) -> tuple[int, bytes]:
        """A GET of ``path``, read whole: for the gateway's own probes, not for proxying."""
        response = await self.request("GET", path.encode("ascii"), [])
        try:
            return response.status, await response.read()
        finally:
            response.release()

    async def _connection(self, fresh: bool) -> _Connection:
        now = self.loop.time()
        idle = self._idle
        while idle and not fresh:
            conn = idle.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            if now - conn.idle_since >= self.keepalive:
                conn.close()
                continue
            return conn
        conn = _Connection(self)
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, _ = await self.loop.create_connection(
                    lambda: conn,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                )
        except TimeoutError:
            raise UpstreamTimeout(f"no connection to {self.base_url} in time") from None
        except OSError as exc:
            raise UpstreamUnreachable(f"{self.base_url}: {exc}") from exc
        # uvloop may return before it has called connection_made.
        conn.transport = transport
        if self._closed:
            conn.close()
            raise UpstreamUnreachable("the pool is closed")
        self._all.add(conn)
        return conn

    def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def put_back(self, conn: _Connection | None) -> None:
        """A connection comes back from a request (None: it was closed); its slot is free."""
        if conn is not None:
            if self._closed:
                conn.close()
            else:
                self._idle.append(conn)
        assert self._slots is not None
        self._slots.release()

    def lost(self, conn: _Connection) -> None:
        self._all.discard(conn)


def _send(
    conn: _Connection,
    response: Response,
    host: bytes,
    method: str,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes | AsyncIterator[bytes] | None,
    content_length: int | None,
) -> asyncio.Task[None] | None:
    """Writes the request's head (and a bytes body, in the same write); a streamed body is
    sent by the task returned."""
    head = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\nhost: ", host]
    for name, value in headers:
        head += (b"\r\n", name, b": ", value)
    if isinstance(body, bytes):
        head += (b"\r\ncontent-length: ", str(len(body)).encode("ascii"), b"\r\n\r\n", body)
    elif body is None:
        head.append(b"\r\n\r\n")
    elif content_length is None:
        head.append(b"\r\ntransfer-encoding: chunked\r\n\r\n")
    else:
        head += (b"\r\ncontent-length: ", str(content_length).encode("ascii"), b"\r\n\r\n")
    conn.start(response, b"".join(head))
    if body is None or isinstance(body, bytes):
        return None
    writer = asyncio.create_task(_send_body(conn, body, chunked=content_length is None))
    writer.add_done_callback(conn.body_sent)
    return writer


async def _await_head(
    conn: _Connection, response: Response, writer: asyncio.Task[None] | None
) -> None:
    """Waits for the answer's head, while ``writer`` (if any) streams the body: a service may
    answer before the body is whole, and its answer is returned as soon as it comes, however
    slowly the client sends. A refusal (4xx, 5xx) or an answer that closes the connection stops the
    body (RFC 9112 §9.5); after any other, the body goes on while the answer is read, and
    :meth:`Response.release` stops it if it is still going. A body that fails (the client's
    limits, the client gone) before the head raises here. A connection whose body was not
    sent whole is not used again."""
    try:
        while not response._head_done:
            if response._error is not None:
                raise response._error
            if writer is not None and writer.done() and not writer.cancelled():
                failure = writer.exception()
                if failure is not None:
                    raise failure
            await conn.wait()
    except BaseException:
        if writer is not None:
            _stop(conn, writer)
        raise
    if writer is None:
        return
    if writer.done() or response.status >= 400 or not conn.keep_alive:
        _stop(conn, writer)
    else:
        response._writer = writer


def _stop(conn: _Connection, writer: asyncio.Task[None]) -> None:
    """Stops a body still being written; a connection left mid-body is not used again."""
    if not writer.done():
        writer.cancel()
        conn.keep_alive = False
    elif writer.cancelled() or writer.exception() is not None:
        conn.keep_alive = False


async def _send_body(conn: _Connection, body: AsyncIterator[bytes], chunked: bool) -> None:
    """Writes a streamed body as it comes, waiting whenever the service reads slower; stops
    when the connection is gone (its answer, or the closed connection, is read as usual)."""
    chunks = body.__aiter__()
    while True:
        conn.waiting_for_client = True
        try:
            chunk = await chunks.__anext__()
        except StopAsyncIteration:
            break
        finally:
            conn.waiting_for_client = False
            conn.touch()
        if conn.closed:
            return
        if not chunk:
            continue
        if chunked:
            conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        else:
            conn.write(chunk)
        await conn.drain()
    if chunked:
        conn.write(b"0\r\n\r\n")


class UpstreamPool:
    """The services' pools, by name; started and closed with the gateway."""

    def __init__(
        self,
        upstreams: dict[str, str],
        *,
        connect_timeout: float,
        read_timeout: float,
        pool_size: int,
        keepalive_seconds: float = 4.0,
    ) -> None:
        # Keep-alive below uvicorn's (5 s): an idle connection is dropped here before the
        # service closes it. Waiting for a free connection is bounded by the read timeout: a
        # burst larger than the pool queues instead of failing after the connect timeout.
        self.services = {
            name: Upstream(
                base,
                limit=pool_size,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                keepalive=keepalive_seconds,
            )
            for name, base in upstreams.items()
        }

    async def start(self) -> None:
        for upstream in self.services.values():
            upstream.start()

    async def close(self) -> None:
        for upstream in self.services.values():
            upstream.close()
