"""The kustomize trees render, and every object they produce is a valid Kubernetes object.

Validation is offline: ``kubernetes-validate`` ships the Kubernetes JSON schemas in its
wheel. The strict schemas reject unknown fields, so a misspelt or misplaced key fails
here instead of being dropped silently by the API server.
"""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from tests.deploy.kube import OVERLAYS, TREES, Obj, name_of, named, of_kind, render

# The oldest Kubernetes these manifests support, and the newest schema bundled.
KUBERNETES_VERSIONS = ("1.30.0", str(kubernetes_validate.latest_version()))

PROCESSES = ("gateway", "orders", "crowdfund", "referrals")
SERVICES = ("orders", "crowdfund", "referrals")


def schema_errors(obj: Obj, version: str) -> list[str]:
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path) or "(top)"
        return [f"{where} at {path}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{where}: {exc.message}"]
    return []


def inventory(objects: tuple[Obj, ...]) -> dict[str, set[str]]:
    kinds: dict[str, set[str]] = {}
    for obj in objects:
        name = name_of(obj)
        if obj["kind"] == "ConfigMap":
            name = name.rsplit("-", 1)[0]  # drop the content hash
        kinds.setdefault(obj["kind"], set()).add(name)
    return kinds


@pytest.mark.parametrize("tree", TREES)
def test_tree_renders(tree: str) -> None:
    assert render(tree)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("tree", TREES)
def test_every_object_matches_the_kubernetes_schema(tree: str, version: str) -> None:
    errors = [e for obj in render(tree) for e in schema_errors(obj, version)]
    assert not errors, "\n".join(errors)


def test_the_schema_check_rejects_broken_objects() -> None:
    deployment = copy.deepcopy(named(render("prod"), "Deployment", "orders"))
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")  # misspelt field
    assert schema_errors(deployment, KUBERNETES_VERSIONS[0])

    deployment = copy.deepcopy(named(render("prod"), "Deployment", "orders"))
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    assert schema_errors(deployment, KUBERNETES_VERSIONS[0])

    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert schema_errors(unknown, KUBERNETES_VERSIONS[0])


@pytest.mark.parametrize("tree", TREES)
def test_the_platform_is_complete(tree: str) -> None:
    kinds = inventory(render(tree))
    workers = {f"{s}-worker" for s in SERVICES}
    assert kinds.pop("Deployment") == set(PROCESSES) | workers
    assert kinds.pop("Service") == set(PROCESSES)
    assert kinds.pop("ServiceAccount") == set(PROCESSES) | {"qunbuy-migrate"}
    assert kinds.pop("HorizontalPodAutoscaler") == set(PROCESSES)
    assert kinds.pop("PodDisruptionBudget") == set(PROCESSES) | workers
    assert kinds.pop("Job") == {"qunbuy-migrate"}
    assert kinds.pop("ConfigMap") == {"qunbuy-config"}
    if tree in OVERLAYS:
        assert len(kinds.pop("Namespace")) == 1
    assert not kinds, f"unexpected kinds: {sorted(kinds)}"


@pytest.mark.parametrize("tree", TREES)
def test_config_map_name_carries_a_content_hash(tree: str) -> None:
    # kustomize rewrites every reference to the hashed name, so changed settings roll
    # the pods instead of being picked up by some of them at their next restart.
    (config,) = of_kind(render(tree), "ConfigMap")
    assert name_of(config) != "qunbuy-config"
    assert name_of(config).startswith("qunbuy-config-")
