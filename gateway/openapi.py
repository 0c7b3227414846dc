"""One OpenAPI document for the whole platform, served by the gateway (``/openapi.json``,
``/docs``).

Each service's own document is read through the proxy's sessions at start-up and again every
``OPENAPI_REFRESH_SECONDS`` (a service that was down, or was upgraded, is picked up then), and
merged with the gateway's own endpoints:

- paths as a client sees them: each service path that a public prefix of ``gateway.routes``
  reaches is renamed to that public path; everything else (``/internal/...``, probes, metrics)
  is left out;
- schemas namespaced by service (``orders.CampaignOut``), except those identical to the
  gateway's schema of the same name (``Problem``), and every ``$ref`` rewritten to match;
- operation ids prefixed by the service; security schemes kept once when identical.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import Callable
from typing import Any

import structlog

from gateway.routes import ROUTES
from gateway.upstream import Upstream, UpstreamError, UpstreamPool

__all__ = ["MergedOpenAPI", "public_path"]

_log = structlog.get_logger("qunbuy.gateway.openapi")
_REF = "#/components/schemas/"


def public_path(service: str, path: str) -> str | None:
    """The public path a client uses for ``path`` of ``service``, or None if none reaches it."""
    for public, (owner, prefix) in ROUTES.items():
        if owner == service and (path == prefix or path.startswith(prefix + "/")):
            return public + path[len(prefix) :]
    return None


def _rewrite_refs(node: Any, names: dict[str, str]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_REF):
            name = ref[len(_REF) :]
            return {**node, "$ref": _REF + names.get(name, name)}
        return {key: _rewrite_refs(value, names) for key, value in node.items()}
    if isinstance(node, list):
        return [_rewrite_refs(item, names) for item in node]
    return node


def merge(own: dict[str, Any], services: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The gateway's document with every service's public paths and their components."""
    merged = copy.deepcopy(own)
    paths: dict[str, Any] = merged.setdefault("paths", {})
    components = merged.setdefault("components", {})
    schemas: dict[str, Any] = components.setdefault("schemas", {})
    security: dict[str, Any] = components.setdefault("securitySchemes", {})
    for service, document in sorted(services.items()):
        theirs = document.get("components", {}).get("schemas", {})
        names = {
            name: name if schemas.get(name) == schema else f"{service}.{name}"
            for name, schema in theirs.items()
        }
        for name, schema in theirs.items():
            schemas.setdefault(names[name], _rewrite_refs(schema, names))
        for name, scheme in document.get("components", {}).get("securitySchemes", {}).items():
            if security.setdefault(name, scheme) != scheme:
                security[f"{service}.{name}"] = scheme
        for path, item in document.get("paths", {}).items():
            public = public_path(service, path)
            if public is None:
                continue
            operations = _rewrite_refs(item, names)
            for operation in operations.values():
                if isinstance(operation, dict) and "operationId" in operation:
                    operation["operationId"] = f"{service}_{operation['operationId']}"
            paths[public] = operations
    merged["paths"] = dict(sorted(paths.items()))
    return merged


class MergedOpenAPI:
    def __init__(self, own: Callable[[], dict[str, Any]], pool: UpstreamPool) -> None:
        self._own = own
        self._pool = pool
        self._documents: dict[str, dict[str, Any]] = {}
        self.document: dict[str, Any] = own()

    async def _fetch(self, service: str, upstream: Upstream) -> None:
        try:
            async with asyncio.timeout(5):
                status, body = await upstream.get("/openapi.json")
            if status != 200:
                return
            document = json.loads(body)
        except (TimeoutError, UpstreamError, ValueError) as exc:
            _log.info("openapi_not_read", service=service, error=type(exc).__name__)
            return
        if isinstance(document, dict):
            self._documents[service] = document

    async def refresh(self) -> bool:
        """Reads every service's document again; True when the merged one changed. A service
        that does not answer keeps the document it last gave."""
        before = dict(self._documents)
        await asyncio.gather(*(self._fetch(n, s) for n, s in self._pool.services.items()))
        if self._documents == before and self.document.get("paths"):
            return False
        self.document = merge(self._own(), self._documents)
        return True

    async def run(self, every: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
