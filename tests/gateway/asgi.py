"""Calling the gateway's ASGI app directly, for what no real client can send through uvicorn
or what needs a scripted service behind it."""

from __future__ import annotations

from typing import Any

from starlette.types import Message

from gateway.proxy import Gateway


async def unused_api(scope: Any, receive: Any, send: Any) -> None:
    """The gateway's own app, for tests in which only proxied paths may be called."""
    raise AssertionError("a proxied path reached the gateway's own app")


async def call(gateway: Gateway, path: str = "/v1/orders/o1", **scope: Any) -> tuple[int, bytes]:
    """One bodiless request (``scope`` entries override the defaults): status and body."""
    full: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"gw")],
        "client": ("127.0.0.1", 5000),
        "scheme": "http",
        **scope,
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await gateway(full, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])
