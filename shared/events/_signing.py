from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Qunbuy-Signature"
TOLERANCE_SECONDS = 300


def sign(secret: str, body: bytes, *, timestamp: int | None = None) -> str:
    if not secret:
        # An empty secret verifies against an empty key, which anyone can forge.
        raise ValueError("refusing to sign with an empty secret")
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def verify(secret: str, body: bytes, header: str | None, *, now: float | None = None) -> bool:
    """True when ``header`` is a fresh HMAC-SHA256 of ``body`` under ``secret``."""
    if not secret or not header:
        return False
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        ts = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > TOLERANCE_SECONDS:
        return False
    expected = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    # Bytes, not str: compare_digest refuses non-ASCII str, and a header is the caller's to fill.
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))
