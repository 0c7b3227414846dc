"""The proxy's second attempt, against a scripted service (tests/gateway/scripted.py): the
race in which a service closes kept-alive connections just as the gateway sends on them
cannot be timed through real processes, so the service here closes them on cue."""

from __future__ import annotations

import asyncio
import json

from gateway.proxy import Gateway
from gateway.upstream import UpstreamPool
from shared.limits import RequestLimits
from tests.gateway.asgi import call, unused_api
from tests.gateway.scripted import Service, ok


async def test_a_request_the_service_closed_on_goes_out_again_on_a_new_connection() -> None:
    # Every connection answers its first request, kept alive, and closes without a byte on
    # its second: as when a service closes several pooled connections at once (a crash, a
    # restart). The GET that meets one of them is sent again on a new connection; on the
    # other idle one it would meet the same close and be answered 502.
    two_open = asyncio.Event()  # the first two requests hold two connections

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await service.read_request(reader)
        if service.connections >= 2:
            two_open.set()
        await two_open.wait()
        writer.write(ok(b'{"n": %d}' % service.connections))
        await writer.drain()
        await service.read_request(reader)

    async with Service(handler) as service:
        pool = UpstreamPool(
            {"orders": f"http://127.0.0.1:{service.port}"},
            connect_timeout=1,
            read_timeout=2,
            pool_size=4,
        )
        await pool.start()
        gateway = Gateway(unused_api, pool=pool, limits=RequestLimits())
        try:
            first = await asyncio.gather(*(call(gateway) for _ in range(2)))
            assert [status for status, _ in first] == [200, 200]
            assert pool.services["orders"].connections == 2

            status, body = await call(gateway)
        finally:
            await pool.close()
    assert status == 200, body
    assert json.loads(body) == {"n": 3}  # answered on a third connection
    assert service.connections == 3
    assert len(service.requests) == 4  # two first requests, the one closed on, its retry
