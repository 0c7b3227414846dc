"""The gateway's client for the services (gateway/upstream.py), against scripted services
(tests/gateway/scripted.py). The proxy as a whole is tested through real processes in
tests/e2e/test_gateway_*.py."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator

import pytest
import uvloop

from gateway.upstream import (
    Upstream,
    UpstreamError,
    UpstreamGone,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from tests.gateway.scripted import Service, answering, keep_answering, ok
from tests.helpers import free_port


def client(port: int, **options: float) -> Upstream:
    settings: dict[str, float] = {
        "limit": 4,
        "connect_timeout": 1.0,
        "read_timeout": 2.0,
        "keepalive": 4.0,
    }
    settings.update(options)
    upstream = Upstream(
        f"http://127.0.0.1:{port}",
        limit=int(settings["limit"]),
        connect_timeout=settings["connect_timeout"],
        read_timeout=settings["read_timeout"],
        keepalive=settings["keepalive"],
    )
    upstream.start()
    return upstream


async def test_a_kept_alive_connection_carries_request_after_request() -> None:
    async with answering() as service:
        upstream = client(service.port)
        for _ in range(3):
            assert await upstream.get("/v1/orders/o1") == (200, b"hello")
        assert service.connections == 1
        assert upstream.connections == 1
        head = service.requests[0][0]
        assert head.startswith(b"GET /v1/orders/o1 HTTP/1.1\r\nhost: 127.0.0.1:")
        upstream.close()


def test_the_same_under_uvloop_which_production_runs() -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(test_a_kept_alive_connection_carries_request_after_request())


async def test_headers_and_a_body_go_out_as_given_with_host_and_length_added() -> None:
    async with answering() as service:
        upstream = client(service.port)
        headers = [(b"x-caf\xc3\xa9", b"cr\xe8me"), (b"authorization", b"Bearer t")]
        response = await upstream.request("POST", b"/a%2Fb?x=1", headers, b'{"n": 1}')
        assert await response.read() == b"hello"
        response.release()
        head, body = service.requests[0]
        assert head.startswith(b"POST /a%2Fb?x=1 HTTP/1.1\r\n")
        assert b"\r\nx-caf\xc3\xa9: cr\xe8me\r\nauthorization: Bearer t\r\n" in head
        assert b"\r\ncontent-length: 8\r\n" in head
        assert body == b'{"n": 1}'
        upstream.close()


@pytest.mark.parametrize("length", [None, 3 * 70_000])
async def test_a_streamed_body_goes_out_chunked_or_with_its_length(length: int | None) -> None:
    async def body() -> AsyncIterator[bytes]:
        for part in (b"a" * 70_000, b"", b"b" * 70_000, b"c" * 70_000):
            yield part

    async with answering() as service:
        upstream = client(service.port)
        response = await upstream.request("PUT", b"/upload", [], body(), length)
        assert response.status == 200
        response.release()
        head, received = service.requests[0]
        assert received == b"a" * 70_000 + b"b" * 70_000 + b"c" * 70_000
        framing = b"transfer-encoding: chunked" if length is None else b"content-length: 210000"
        assert framing in head
        upstream.close()


async def test_chunked_and_connection_delimited_answers_are_read_whole() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await service.read_request(reader)
        writer.write(chunked)
        await service.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
        await writer.drain()

    async with Service(handler) as service:
        upstream = client(service.port)
        first = await upstream.request("GET", b"/c", [])
        assert first.content_length is None
        assert [c async for c in first.iter_chunks()] in ([b"abcde"], [b"abc", b"de"])
        first.release()
        second = await upstream.request("GET", b"/e", [])
        assert await second.read() == b"until the end"
        second.release()
        assert service.connections == 1
        await asyncio.sleep(0.05)
        assert upstream.connections == 0  # closed by the service, not kept
        upstream.close()


async def test_a_head_answer_ends_at_its_head_whatever_its_length_says() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await service.read_request(reader)
            # A HEAD's answer: Content-Length: 10 and no body.
            head_only = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"
            writer.write(head_only if head.startswith(b"HEAD ") else ok())
            await writer.drain()

    async with Service(handler) as service:
        upstream = client(service.port)
        async with asyncio.timeout(1):
            response = await upstream.request("HEAD", b"/h", [])
            assert response.content_length == 10
            assert await response.read() == b""
            response.release()
            # The parser still waits for 10 bytes: the connection is not used again.
            assert (await upstream.get("/"))[0] == 200
        assert service.connections == 2
        upstream.close()


async def test_interim_answers_are_passed_over() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n"
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    async with answering(interim + b"\r\n" + ok()) as service:
        upstream = client(service.port)
        response = await upstream.request("GET", b"/", [])
        assert response.status == 200
        assert response.raw_headers == [(b"content-length", b"5")]
        assert await response.read() == b"hello"
        response.release()
        upstream.close()
    # An interim answer's framing headers are not the final answer's.
    async with answering(interim + b"content-length: 7\r\n\r\n" + chunked) as service:
        upstream = client(service.port)
        response = await upstream.request("GET", b"/", [])
        assert (response.status, response.content_length) == (200, None)
        assert await response.read() == b"hi"
        response.release()
        upstream.close()


async def test_a_connection_closed_before_any_answer_is_gone_and_frees_its_slot() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await service.read_request(reader)
        if service.connections == 1:
            return  # closes without a byte
        writer.write(ok())
        await writer.drain()

    async with Service(handler) as service:
        upstream = client(service.port, limit=1)
        with pytest.raises(UpstreamGone):
            await upstream.request("POST", b"/x", [], b"{}")
        assert await upstream.get("/x") == (200, b"hello")
        upstream.close()


async def test_an_answer_cut_short_is_an_error_but_not_gone() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await service.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten..")
        await writer.drain()

    async with Service(handler) as service:
        upstream = client(service.port)
        response = await upstream.request("GET", b"/", [])
        with pytest.raises(UpstreamError) as caught:
            await response.read()
        assert not isinstance(caught.value, UpstreamGone)
        response.release()
        upstream.close()


async def test_a_silent_service_times_out_after_the_read_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await service.read_request(reader)
        await asyncio.sleep(5)

    async with Service(handler) as service:
        upstream = client(service.port, read_timeout=0.3, limit=1)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await upstream.request("GET", b"/", [])
        assert 0.25 < time.monotonic() - started < 1.5
        assert upstream.connections == 0  # the connection was dropped, its slot freed
        service.handler = keep_answering(service)
        assert await upstream.get("/") == (200, b"hello")
        upstream.close()


async def test_a_slow_reader_pauses_the_service_instead_of_timing_out() -> None:
    size = 4 * 1024 * 1024

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if service.connections > 1:
            await keep_answering(service)(reader, writer)
            return
        await service.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        for _ in range(64):
            writer.write(b"z" * (size // 64))
            await writer.drain()
        await keep_answering(service)(reader, writer)

    async with Service(handler) as service:
        upstream = client(service.port, read_timeout=0.3)
        response = await upstream.request("GET", b"/big", [])
        received = 0
        largest = 0
        async for chunk in response.iter_chunks():
            received += len(chunk)
            largest = max(largest, len(chunk))
            if received < size // 2:
                await asyncio.sleep(0.5 if received == len(chunk) else 0)
        assert received == size
        # Flow control: what is held for the reader stays near the high-water mark (256 KiB)
        # rather than the whole body the service had sent by then.
        assert largest < 2 * 1024 * 1024
        response.release()
        # The service's keep-alive clock ran while the reader lagged: the connection is not
        # used again.
        assert await upstream.get("/") == (200, b"hello")
        assert service.connections == 2
        upstream.close()


@pytest.mark.parametrize(
    "answer",
    [b"this is not HTTP\r\n\r\n", b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 300_000 + b"\r\n\r\n"],
    ids=["not-http", "huge-head"],
)
async def test_an_answer_that_is_not_http_or_too_large_is_an_error(answer: bytes) -> None:
    async with answering(answer) as service:
        upstream = client(service.port)
        with pytest.raises(UpstreamError):
            await upstream.request("GET", b"/", [])
        await asyncio.sleep(0.05)
        assert upstream.connections == 0
        upstream.close()


async def test_the_pool_holds_at_most_its_limit_and_waiters_time_out() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await service.read_request(reader)
            await asyncio.sleep(0.2)
            writer.write(ok())
            await writer.drain()

    async with Service(handler) as service:
        upstream = client(service.port, limit=2, read_timeout=1.0)
        results = await asyncio.gather(*(upstream.get("/") for _ in range(6)))
        assert results == [(200, b"hello")] * 6
        assert service.most_open == 2
        upstream.close()

        # Each answer takes 0.2 s: the second waits 0.2 s for the one connection, the third
        # would wait 0.4 s, longer than the read timeout.
        upstream = client(service.port, limit=1, read_timeout=0.3)
        outcomes = await asyncio.gather(
            upstream.get("/"), upstream.get("/"), upstream.get("/"), return_exceptions=True
        )
        assert list(outcomes[:2]) == [(200, b"hello")] * 2
        assert isinstance(outcomes[2], UpstreamTimeout)
        upstream.close()


async def test_cancelled_requests_leave_no_slot_or_connection_behind() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await service.read_request(reader)
        await asyncio.sleep(10)

    async with Service(handler) as service:
        upstream = client(service.port, limit=2)
        tasks = [asyncio.create_task(upstream.get("/")) for _ in range(10)]
        await asyncio.sleep(0.2)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.05)
        assert upstream.connections == 0
        service.handler = keep_answering(service)
        async with asyncio.timeout(1):
            results = await asyncio.gather(upstream.get("/"), upstream.get("/"))
        assert list(results) == [(200, b"hello")] * 2
        upstream.close()


async def test_no_connection_is_unreachable_and_nothing_is_sent() -> None:
    upstream = client(free_port())
    with pytest.raises(UpstreamUnreachable):
        await upstream.get("/")
    with pytest.raises(UpstreamUnreachable):  # the slot came back: the same again, no hang
        await upstream.get("/")
    upstream.close()


async def test_a_body_that_fails_mid_stream_aborts_the_connection() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"part one"
        raise RuntimeError("the client's body broke a limit")

    async with answering() as service:
        upstream = client(service.port, limit=1)
        with pytest.raises(RuntimeError):
            await upstream.request("POST", b"/u", [], body())
        assert await upstream.get("/after") == (200, b"hello")
        assert service.connections == 2  # the half-sent one was not reused
        upstream.close()


@pytest.mark.parametrize("client_speed", ["fast", "stalled"])
async def test_an_early_answer_during_a_streamed_body_is_returned_at_once(
    client_speed: str,
) -> None:
    """The service refuses after the head (a 413) and reads nothing more: whether the client
    sends faster than the service reads (the writes back up) or stalls, the answer is
    returned when it comes, and the half-sent connection is not used again."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if service.connections > 1:
            await keep_answering(service)(reader, writer)
            return
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ok(b"too large").replace(b"200 OK", b"413 Content Too Large"))
        await asyncio.sleep(5)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(200):
            yield b"x" * 65536
            await asyncio.sleep(5 if client_speed == "stalled" else 0)

    async with Service() as service:
        service.handler = handler
        upstream = client(service.port)
        async with asyncio.timeout(1):
            response = await upstream.request("POST", b"/u", [], body(), 200 * 65536)
            assert response.status == 413
            assert await response.read() == b"too large"
            response.release()
            assert await upstream.get("/") == (200, b"hello")
        assert service.connections == 2
        upstream.close()


async def test_a_service_that_stops_reading_the_body_times_out() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(10)  # neither reads the body nor answers

    async def body() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 65536

    async with Service(handler) as service:
        upstream = client(service.port, read_timeout=0.3)
        async with asyncio.timeout(3):
            with pytest.raises(UpstreamTimeout):
                await upstream.request("PUT", b"/u", [], body())
        upstream.close()


async def test_an_answer_over_the_high_water_mark_read_whole_leaves_a_usable_connection() -> None:
    """read() (the gateway's probes, the OpenAPI documents) never pauses the connection, so
    a large answer arriving in one piece leaves it ready for the next request."""
    async with answering(ok(b"d" * 300_000)) as service:
        upstream = client(service.port)
        async with asyncio.timeout(2):
            for _ in range(3):
                status, body = await upstream.get("/openapi.json")
                assert (status, len(body)) == (200, 300_000)
        assert service.connections == 1
        upstream.close()


async def test_a_second_answer_in_the_same_read_is_refused_and_the_first_stands() -> None:
    second = b"HTTP/1.1 302 Found\r\nlocation: https://evil.example\r\ncontent-length: 50\r\n\r\n"
    async with answering(ok() + second) as service:
        upstream = client(service.port)
        async with asyncio.timeout(1):
            response = await upstream.request("GET", b"/", [])
            assert response.status == 200
            assert response.raw_headers == [(b"content-length", b"5")]
            assert await response.read() == b"hello"
            response.release()
            # The connection, whose parser saw the start of another answer, is not reused.
            assert await upstream.get("/") == (200, b"hello")
        assert service.connections == 2
        upstream.close()


async def test_a_reset_during_a_body_delimited_by_the_close_is_an_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await service.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(0.1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST, not FIN

    async with Service(handler) as service:
        upstream = client(service.port)
        response = await upstream.request("GET", b"/", [])
        with pytest.raises(UpstreamError):
            await response.read()
        response.release()
        upstream.close()


async def test_idle_connections_are_dropped_after_the_keepalive() -> None:
    async with answering() as service:
        upstream = client(service.port, keepalive=0.1)
        assert await upstream.get("/") == (200, b"hello")
        await asyncio.sleep(0.2)
        assert await upstream.get("/") == (200, b"hello")
        assert service.connections == 2
        upstream.close()


async def test_bytes_nobody_asked_for_end_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await service.read_request(reader)
            writer.write(ok())
            await asyncio.sleep(0.05)
            writer.write(ok(b"unasked"))
            await writer.drain()

    async with Service(handler) as service:
        upstream = client(service.port)
        assert await upstream.get("/") == (200, b"hello")
        await asyncio.sleep(0.15)
        assert upstream.connections == 0
        assert await upstream.get("/") == (200, b"hello")
        upstream.close()


async def test_a_slow_client_body_is_not_the_services_silence() -> None:
    """The read timeout counts the service's silence: the time spent waiting for the
    client's next piece of body is not the service's."""

    async def body() -> AsyncIterator[bytes]:
        for part in (b"slow ", b"client"):
            await asyncio.sleep(0.5)
            yield part

    async with answering() as service:
        upstream = client(service.port, read_timeout=0.3)
        response = await upstream.request("POST", b"/u", [], body())
        assert (response.status, await response.read()) == (200, b"hello")
        response.release()
        assert service.requests[0][1] == b"slow client"
        upstream.close()


async def test_after_an_early_answer_that_is_not_a_refusal_the_body_goes_on() -> None:
    """A service may answer 200 at once and stream back what it reads (RFC 9112 §9.5 asks
    the client to go on sending unless the answer refuses or closes)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            data = await reader.readexactly(size + 2)
            writer.write(b"%x\r\n%b" % (size, data))
            if size == 0:
                break
        await writer.drain()

    async def body() -> AsyncIterator[bytes]:
        for part in (b"one ", b"two ", b"three"):
            await asyncio.sleep(0.05)
            yield part

    async with Service(handler) as service:
        upstream = client(service.port)
        async with asyncio.timeout(2):
            response = await upstream.request("POST", b"/echo", [], body())
            assert response.status == 200
            assert b"".join([c async for c in response.iter_chunks()]) == b"one two three"
        response.release()
        upstream.close()


async def test_a_fresh_request_opens_a_new_connection_while_one_is_idle() -> None:
    async with answering() as service:
        upstream = client(service.port)
        assert await upstream.get("/x") == (200, b"hello")
        response = await upstream.request("GET", b"/x", [], fresh=True)
        assert (response.status, await response.read()) == (200, b"hello")
        response.release()
        assert service.connections == 2
        assert upstream.connections == 2  # both kept: the idle one was not taken or dropped
        upstream.close()


async def test_a_connection_gone_drops_the_idle_ones_so_the_next_request_opens_a_new_one() -> None:
    # The first two connections each answer one request, then close without a byte on the
    # next, as a service going away does; later ones keep answering. A keyless POST after the
    # first Gone must not meet the other dead connection (the proxy would answer it 502).
    two_open = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = service.connections
        await service.read_request(reader)
        if number <= 2:
            if number == 2:
                two_open.set()
            await two_open.wait()
            writer.write(ok())
            await writer.drain()
            await service.read_request(reader)
            return
        writer.write(ok())
        await writer.drain()
        await keep_answering(service)(reader, writer)

    async with Service(handler) as service:
        upstream = client(service.port)
        first = await asyncio.gather(upstream.get("/a"), upstream.get("/b"))
        assert list(first) == [(200, b"hello")] * 2
        assert upstream.connections == 2
        with pytest.raises(UpstreamGone):
            await upstream.get("/c")
        response = await upstream.request("POST", b"/d", [], b"{}")
        assert (response.status, await response.read()) == (200, b"hello")
        response.release()
        assert service.connections == 3
        upstream.close()
