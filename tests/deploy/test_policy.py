"""Rules every workload follows: locked-down pods, probes, limits, autoscaling, disruption
budgets, and migrations in a Job rather than at replica start."""

from __future__ import annotations

import ast

import pytest

from qunbuy.platform import APPS, PORTS, SERVER_OPTIONS
from tests.deploy.kube import (
    ROOT,
    TREES,
    Obj,
    all_containers,
    containers,
    labels_of,
    match_labels,
    name_of,
    named,
    of_kind,
    pod_labels,
    pod_spec,
    quantity,
    render,
    selects,
    workloads,
)

SERVICES = ("orders", "crowdfund", "referrals")
# Volume types the "restricted" Pod Security Standard allows.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def process_of(deployment: Obj) -> str:
    """orders-worker -> orders; the process a Deployment runs."""
    return labels_of(deployment)["app.kubernetes.io/name"]


def component(obj: Obj) -> str:
    return labels_of(obj)["app.kubernetes.io/component"]


def deployments(tree: str) -> list[Obj]:
    return of_kind(render(tree), "Deployment")


@pytest.mark.parametrize("tree", TREES)
def test_containers_are_locked_down(tree: str) -> None:
    for workload, container in all_containers(render(tree)):
        where = f"{name_of(workload)}/{container['name']}"
        sc = container.get("securityContext") or {}
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert sc.get("readOnlyRootFilesystem") is True, where
        assert sc.get("privileged", False) is False, where
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
        assert not sc.get("capabilities", {}).get("add"), where
        assert sc.get("runAsUser", 1) != 0, where


@pytest.mark.parametrize("tree", TREES)
def test_pods_run_as_non_root_with_the_runtime_default_seccomp_profile(tree: str) -> None:
    for workload in workloads(render(tree)):
        spec = pod_spec(workload)
        sc = spec.get("securityContext") or {}
        assert sc.get("runAsNonRoot") is True, name_of(workload)
        assert sc.get("runAsUser", 0) > 0, name_of(workload)
        assert sc.get("seccompProfile") == {"type": "RuntimeDefault"}, name_of(workload)
        for container in containers(workload):
            # A container may not weaken what the pod sets.
            csc = container.get("securityContext") or {}
            assert csc.get("runAsNonRoot", True) is True, container["name"]
            assert csc.get("seccompProfile", {"type": "RuntimeDefault"}) == {
                "type": "RuntimeDefault"
            }


@pytest.mark.parametrize("tree", TREES)
def test_pods_meet_the_restricted_pod_security_standard(tree: str) -> None:
    for workload in workloads(render(tree)):
        spec = pod_spec(workload)
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(host, False), f"{name_of(workload)}: {host}"
        for volume in spec.get("volumes") or []:
            kinds = set(volume) - {"name"}
            assert kinds <= RESTRICTED_VOLUMES, f"{name_of(workload)}: volume {volume}"
        for container in containers(workload):
            for port in container.get("ports") or []:
                assert "hostPort" not in port, container["name"]


@pytest.mark.parametrize("tree", TREES)
def test_containers_have_requests_and_limits(tree: str) -> None:
    for workload, container in all_containers(render(tree)):
        where = f"{name_of(workload)}/{container['name']}"
        resources = container.get("resources") or {}
        for resource in ("cpu", "memory"):
            request = resources.get("requests", {}).get(resource)
            limit = resources.get("limits", {}).get(resource)
            assert request is not None, f"{where}: {resource} request"
            assert limit is not None, f"{where}: {resource} limit"
            assert quantity(request) <= quantity(limit), f"{where}: {resource}"
        # Memory is not compressible: a request below the limit invites OOM kills under
        # node pressure, so the two are equal.
        assert quantity(resources["requests"]["memory"]) == quantity(
            resources["limits"]["memory"]
        ), where


@pytest.mark.parametrize("tree", TREES)
def test_long_running_containers_have_probes(tree: str) -> None:
    for deployment in deployments(tree):
        for container in containers(deployment):
            where = f"{name_of(deployment)}/{container['name']}"
            ports = {p["name"]: p["containerPort"] for p in container.get("ports") or []}
            # The gateway's /readyz is "every service is ready": as its pods' readiness it
            # would take every gateway out of rotation when one service is down, so its
            # pods are ready when the gateway itself is (and answer 502/503 per service).
            ready = "/healthz" if process_of(deployment) == "gateway" else "/readyz"
            expected = {
                "startupProbe": "/healthz",
                "livenessProbe": "/healthz",
                "readinessProbe": ready,
            }
            for probe, path in expected.items():
                http = (container.get(probe) or {}).get("httpGet")
                assert http is not None, f"{where}: no {probe}"
                assert http["path"] == path, f"{where}: {probe}"
                assert http["port"] in ports or http["port"] in ports.values(), where


@pytest.mark.parametrize("tree", TREES)
def test_processes_run_the_apps_on_their_ports(tree: str) -> None:
    """The same apps and ports as ``qunbuy up`` (qunbuy.platform) runs locally."""
    for deployment in deployments(tree):
        process = process_of(deployment)
        (container,) = containers(deployment)
        port = PORTS[process]
        assert container["command"] == [
            "uvicorn",
            APPS[process],
            "--factory",
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            *SERVER_OPTIONS[process],
        ], name_of(deployment)
        assert "args" not in container, name_of(deployment)
        assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
        assert annotations.get("prometheus.io/port") == str(port)
        assert annotations.get("prometheus.io/path") == "/metrics"


@pytest.mark.parametrize("app", sorted(set(APPS.values())))
def test_app_factories_exist(app: str) -> None:
    module, _, factory = app.partition(":")
    source = ROOT.joinpath(*module.split(".")).with_suffix(".py")
    tree = ast.parse(source.read_text())
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert factory in functions, f"{source} has no def {factory}"


@pytest.mark.parametrize("tree", TREES)
def test_service_accounts_exist_and_no_api_token_is_mounted(tree: str) -> None:
    objects = render(tree)
    accounts = {name_of(sa): sa for sa in of_kind(objects, "ServiceAccount")}
    for sa in accounts.values():
        assert sa.get("automountServiceAccountToken") is False, name_of(sa)
    for workload in workloads(objects):
        spec = pod_spec(workload)
        assert spec["serviceAccountName"] in accounts, name_of(workload)
        assert spec.get("automountServiceAccountToken") is False, name_of(workload)
        # Service links put variables such as ORDERS_PORT=tcp://... into every pod.
        assert spec.get("enableServiceLinks") is False, name_of(workload)


@pytest.mark.parametrize("tree", TREES)
def test_deployment_selectors_match_their_pods_only(tree: str) -> None:
    all_deployments = deployments(tree)
    for deployment in all_deployments:
        selector = match_labels(deployment)
        assert selects(selector, pod_labels(deployment)), name_of(deployment)
        others = [d for d in all_deployments if d is not deployment]
        assert not [d for d in others if selects(selector, pod_labels(d))], name_of(deployment)


@pytest.mark.parametrize("tree", TREES)
def test_services_send_traffic_to_api_pods_only(tree: str) -> None:
    objects = render(tree)
    for service in of_kind(objects, "Service"):
        targets = [
            d for d in deployments(tree) if selects(service["spec"]["selector"], pod_labels(d))
        ]
        assert [name_of(d) for d in targets] == [name_of(service)], name_of(service)
        (target,) = targets
        assert component(target) == "api"
        (container,) = containers(target)
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in {p["name"] for p in container["ports"]}
            assert port["port"] == PORTS[process_of(target)]


@pytest.mark.parametrize("tree", TREES)
def test_workers_are_separate_deployments_without_a_service(tree: str) -> None:
    objects = render(tree)
    workers = [d for d in deployments(tree) if component(d) == "worker"]
    assert sorted(process_of(w) for w in workers) == sorted(SERVICES)
    for worker in workers:
        assert name_of(worker) == f"{process_of(worker)}-worker"
        assert worker["spec"].get("replicas", 1) >= 1
        for service in of_kind(objects, "Service"):
            assert not selects(service["spec"]["selector"], pod_labels(worker))


@pytest.mark.parametrize("tree", TREES)
def test_api_deployments_are_autoscaled(tree: str) -> None:
    objects = render(tree)
    hpas = of_kind(objects, "HorizontalPodAutoscaler")
    targets = []
    for hpa in hpas:
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment")
        target = named(objects, "Deployment", ref["name"])
        targets.append(name_of(target))
        assert component(target) == "api", name_of(hpa)
        # The autoscaler owns the replica count; a fixed one would be reset on every apply.
        assert "replicas" not in target["spec"], name_of(target)
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        metrics = hpa["spec"]["metrics"]
        assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in metrics)
        (container,) = containers(target)
        # Utilization is measured against the request, so there must be one.
        assert "cpu" in container["resources"]["requests"]
    api = sorted(name_of(d) for d in deployments(tree) if component(d) == "api")
    assert sorted(targets) == api


@pytest.mark.parametrize("tree", TREES)
def test_every_deployment_has_one_disruption_budget(tree: str) -> None:
    pdbs = of_kind(render(tree), "PodDisruptionBudget")
    for deployment in deployments(tree):
        covering = [p for p in pdbs if selects(match_labels(p), pod_labels(deployment))]
        assert len(covering) == 1, name_of(deployment)
        (pdb,) = covering
        # maxUnavailable never blocks a node drain, even at one replica.
        assert pdb["spec"].get("maxUnavailable") == 1, name_of(pdb)
        assert "minAvailable" not in pdb["spec"]
    for pdb in pdbs:
        assert sum(selects(match_labels(pdb), pod_labels(d)) for d in deployments(tree)) == 1


@pytest.mark.parametrize("tree", TREES)
def test_migrations_run_once_in_a_job_never_at_replica_start(tree: str) -> None:
    objects = render(tree)
    (job,) = of_kind(objects, "Job")
    spec = pod_spec(job)
    assert spec["restartPolicy"] == "Never"
    commands = [c["command"] + c.get("args", []) for c in containers(job)]
    # Init containers run one after the other, and the main container after them all.
    assert commands == [["qunbuy", "migrate", "--service", s] for s in (*SERVICES, "gateway")]
    assert job["spec"]["backoffLimit"] <= 3
    assert "activeDeadlineSeconds" in job["spec"]
    for deployment in deployments(tree):
        for container in containers(deployment):
            words = container.get("command", []) + container.get("args", [])
            assert not any("migrat" in w or "alembic" in w for w in words)
            assert "initContainers" not in pod_spec(deployment)
