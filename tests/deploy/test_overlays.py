"""What the overlays change (namespace, image tag, replicas, resources) and what they
must not (the objects, the one image)."""

from __future__ import annotations

import re

import pytest

from tests.deploy.kube import (
    CLUSTER_SCOPED,
    OVERLAYS,
    Obj,
    all_containers,
    containers,
    labels_of,
    name_of,
    named,
    of_kind,
    quantity,
    render,
)

IMAGE = re.compile(
    r"(?P<repo>[^:@]+(?::\d+/[^:@]+)?)(?::(?P<tag>[\w.-]+))?(?:@(?P<digest>sha256:\w+))?"
)
RELEASE_TAG = re.compile(r"\d+\.\d+\.\d+")


def image_parts(image: str) -> tuple[str, str | None, str | None]:
    match = IMAGE.fullmatch(image)
    assert match, image
    return match["repo"], match["tag"], match["digest"]


def images(overlay: str) -> set[str]:
    return {c["image"] for _, c in all_containers(render(overlay))}


def identity(obj: Obj) -> tuple[str, str]:
    name = name_of(obj)
    if obj["kind"] == "ConfigMap":
        name = name.rsplit("-", 1)[0]
    if obj["kind"] == "Namespace":
        name = "-"
    return obj["kind"], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_process_runs_the_one_image(overlay: str) -> None:
    (image,) = images(overlay)
    repo, tag, digest = image_parts(image)
    assert tag or digest, f"{image} has neither tag nor digest"
    assert tag != "latest"
    assert "/" in repo, f"{image}: name a registry so that nodes pull the right image"


def test_the_overlays_use_the_same_image_repository() -> None:
    repos = {image_parts(i)[0] for overlay in OVERLAYS for i in images(overlay)}
    assert len(repos) == 1, repos


def test_prod_runs_a_release_version() -> None:
    (image,) = images("prod")
    _, tag, _ = image_parts(image)
    assert tag is not None, image
    assert RELEASE_TAG.fullmatch(tag), image


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_image_pull_policy_is_set(overlay: str) -> None:
    for _, container in all_containers(render(overlay)):
        assert container.get("imagePullPolicy") == "IfNotPresent", container["name"]


def test_the_overlays_render_the_same_objects() -> None:
    dev, prod = ({identity(o) for o in render(overlay)} for overlay in OVERLAYS)
    assert dev == prod


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lives_in_the_overlay_namespace(overlay: str) -> None:
    objects = render(overlay)
    (namespace,) = of_kind(objects, "Namespace")
    labels = labels_of(namespace)
    assert labels.get("pod-security.kubernetes.io/enforce") == "restricted"
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace") == name_of(namespace), identity(obj)
        assert labels_of(obj).get("app.kubernetes.io/part-of") == "qunbuy", identity(obj)
        assert labels_of(obj).get("app.kubernetes.io/instance"), identity(obj)


def test_the_namespaces_differ() -> None:
    names = {name_of(of_kind(render(overlay), "Namespace")[0]) for overlay in OVERLAYS}
    assert len(names) == len(OVERLAYS)


def test_prod_is_highly_available() -> None:
    objects = render("prod")
    for hpa in of_kind(objects, "HorizontalPodAutoscaler"):
        # With maxUnavailable: 1 in the PDB, three replicas keep two serving in a drain.
        assert hpa["spec"]["minReplicas"] >= 3, name_of(hpa)
    for deployment in of_kind(objects, "Deployment"):
        if name_of(deployment).endswith("-worker"):
            assert deployment["spec"]["replicas"] >= 2, name_of(deployment)
        else:
            assert deployment["spec"]["template"]["spec"].get("topologySpreadConstraints")


def test_dev_is_one_replica_of_each() -> None:
    objects = render("dev")
    for hpa in of_kind(objects, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["minReplicas"] == 1, name_of(hpa)
    for deployment in of_kind(objects, "Deployment"):
        assert deployment["spec"].get("replicas", 1) == 1, name_of(deployment)


def test_dev_asks_for_no_more_than_prod() -> None:
    dev, prod = render("dev"), render("prod")
    for deployment in of_kind(prod, "Deployment"):
        (prod_container,) = containers(deployment)
        (dev_container,) = containers(named(dev, "Deployment", name_of(deployment)))
        for side in ("requests", "limits"):
            for resource, value in prod_container["resources"][side].items():
                assert quantity(dev_container["resources"][side][resource]) <= quantity(value)
