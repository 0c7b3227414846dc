"""The OpenAPI document tells the truth about errors and idempotency keys.

FastAPI documents validation errors as ``application/json`` with its own schema; ours are
``application/problem+json`` with :class:`~shared.errors.Problem`, like every other error. Each
error response lists its stable codes (``x-problem-codes``, and one example per code), and an
``Idempotency-Key`` that an endpoint requires is marked required (the dependency checks it
itself, to answer 400 ``idempotency_key_required`` rather than a generic 422). An endpoint
that states the roles within a merchant it needs lists them in ``x-merchant-roles`` (and the
other roles it admits in ``x-roles``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts

from shared.auth import merchant_requirement
from shared.errors import PROBLEM_JSON, Problem

__all__ = ["REQUIRED_MARK", "install_openapi"]

# Put in a header parameter's schema by a dependency that requires the header itself.
REQUIRED_MARK = "x-qunbuy-required"
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def _fix_operation(operation: dict[str, Any]) -> None:
    for parameter in operation.get("parameters", []):
        schema = parameter.get("schema", {})
        if schema.pop(REQUIRED_MARK, False):
            parameter["required"] = True
    for status, response in operation.get("responses", {}).items():
        if str(status)[0] not in "45":
            continue
        codes = response.pop("x-problem-codes", None) or []
        validated = operation.get("parameters") or operation.get("requestBody")
        if status == "422" and validated and "validation_error" not in codes:
            codes = ["validation_error", *codes]
        media: dict[str, Any] = {"schema": _PROBLEM_REF}
        existing = response.get("content", {}).get(PROBLEM_JSON, {})
        if "examples" in existing:
            media["examples"] = existing["examples"]
        response["content"] = {PROBLEM_JSON: media}
        if codes:
            response["x-problem-codes"] = codes
        if status == "422":
            response["description"] = ", ".join(f"`{code}`" for code in codes)


def _mark_roles(app: FastAPI, document: dict[str, Any]) -> None:
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if not isinstance(route, APIRoute) or context.path is None:
            continue
        stated = merchant_requirement(route.dependant)
        if stated is None:
            continue
        for method in context.methods or ():
            operation = document.get("paths", {}).get(context.path, {}).get(method.lower())
            if operation is not None:
                operation["x-merchant-roles"] = list(stated.roles)
                operation["x-roles"] = ["admin", *stated.others]


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(
            title=app.title, version=app.version, routes=app.routes, description=app.description
        )
        for path_item in document.get("paths", {}).values():
            for operation in path_item.values():
                if isinstance(operation, dict) and "responses" in operation:
                    _fix_operation(operation)
        _mark_roles(app, document)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault("Problem", Problem.model_json_schema(ref_template="{model}"))
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
