"""The environment each container gets: complete for its settings class, secrets only
from Secrets, peers addressed by Service, and the documented Secret list exact."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from pydantic_settings import BaseSettings

from gateway.config import GatewaySettings
from qunbuy.platform import PORTS, SUBSCRIBERS
from services.crowdfund.config import CrowdfundSettings
from services.orders.config import OrdersSettings
from services.referrals.config import ReferralsSettings
from shared.payments import PaymentSettings
from shared.settings import ServiceSettings
from tests.deploy.kube import (
    OVERLAYS,
    ROOT,
    TREES,
    EnvValue,
    Literal,
    Obj,
    SecretRef,
    all_containers,
    container_env,
    containers,
    labels_of,
    mounted_secret_files,
    name_of,
    named,
    of_kind,
    pod_labels,
    render,
    secret_references,
    selects,
)

SETTINGS: dict[str, type[GatewaySettings] | type[ServiceSettings]] = {
    "gateway": GatewaySettings,
    "orders": OrdersSettings,
    "crowdfund": CrowdfundSettings,
    "referrals": ReferralsSettings,
}
SERVICES = ("orders", "crowdfund", "referrals")
# Referrals pays withdrawals out through the payment layer (Connect transfers).
PAYING = ("orders", "crowdfund", "referrals")
# Settings a process is to read that no settings class declares yet (none now: the
# gateway's REDIS_URL is read). Anything else must be a declared alias, so a misspelt
# variable fails here instead of being ignored by pydantic-settings.
PLANNED_SETTINGS: set[str] = set()
# Variables that carry credentials and so must come from a Secret.
SECRET_SETTINGS = re.compile(r"DATABASE_URL$|SECRET|PASSWORD|_TOKEN$|^STRIPE_API_KEY$|^REDIS_URL$")
DOCS = ROOT / "docs" / "deploy.md"


def aliases(settings: type[BaseSettings]) -> set[str]:
    return {f.alias or name.upper() for name, f in settings.model_fields.items()}


def process_of(deployment: Obj) -> str:
    return labels_of(deployment)["app.kubernetes.io/name"]


def deployment_envs(tree: str) -> list[tuple[Obj, Obj, dict[str, EnvValue]]]:
    objects = render(tree)
    return [
        (d, c, container_env(c, objects))
        for d in of_kind(objects, "Deployment")
        for c in containers(d)
    ]


def service_for(objects: tuple[Obj, ...], url: str) -> str:
    """The process whose API pods a URL reaches: http://orders:8001 -> orders."""
    parts = urlsplit(url)
    assert parts.scheme == "http", url
    assert parts.hostname, url
    assert parts.port, url
    assert parts.path in ("", "/"), url
    service = named(objects, "Service", parts.hostname)
    assert parts.port in [p["port"] for p in service["spec"]["ports"]], url
    (target,) = [
        d
        for d in of_kind(objects, "Deployment")
        if selects(service["spec"]["selector"], pod_labels(d))
    ]
    return process_of(target)


def documented_secrets() -> dict[tuple[str, str], set[str]]:
    """(Secret, key) -> the workloads docs/deploy.md says read it (its "Secrets" table)."""
    section = DOCS.read_text().split("\n## Secrets\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[tuple[str, str], set[str]] = {}
    for line in section.splitlines():
        match = re.match(r"\|\s*`([^`]+)`\s*\|\s*`([^`]+)`\s*\|([^|]*)\|", line)
        if match and match.group(1) != "Secret":
            readers = {r.strip() for r in match.group(3).split(",") if r.strip()}
            rows[(match.group(1), match.group(2))] = readers
    return rows


def secret_readers(tree: str) -> dict[tuple[str, str], set[str]]:
    objects = render(tree)
    readers: dict[tuple[str, str], set[str]] = {}
    for workload, container in all_containers(objects):
        refs = {
            (v.secret, v.key)
            for v in container_env(container, objects).values()
            if isinstance(v, SecretRef)
        }
        refs |= set(mounted_secret_files(workload, container).values())
        for ref in refs:
            readers.setdefault(ref, set()).add(name_of(workload))
    return readers


@pytest.mark.parametrize("tree", TREES)
def test_settings_accept_the_environment_of_each_container(tree: str) -> None:
    """Each process's settings class, built from exactly what its container gets.

    A required setting the manifests miss, a value of the wrong type or a failing
    validator (EVENT_SECRET outside the embedded mode) fails here, not at rollout.
    """
    for deployment, _, env in deployment_envs(tree):
        settings_cls = SETTINGS[process_of(deployment)]
        values = {
            name: value.value if isinstance(value, Literal) else f"<{value}>"
            for name, value in env.items()
        }
        # By alias, from these values only: the machine's environment plays no part.
        settings = settings_cls.model_validate(values)
        assert settings.mode == "production", name_of(deployment)
        if isinstance(settings, ServiceSettings):
            assert settings.worker_enabled is (name_of(deployment).endswith("-worker"))
            settings.subscribers()
        # Production takes real payments: "disabled" would answer 503 to every payment.
        if process_of(deployment) in PAYING:
            assert isinstance(settings, PaymentSettings)
            assert settings.payment_provider == "stripe"


@pytest.mark.parametrize("tree", TREES)
def test_every_variable_is_one_a_process_reads(tree: str) -> None:
    objects = render(tree)
    known = set().union(*(aliases(s) for s in SETTINGS.values())) | PLANNED_SETTINGS
    for config in of_kind(objects, "ConfigMap"):
        assert set(config["data"]) <= known, sorted(set(config["data"]) - known)
    for deployment, container, _ in deployment_envs(tree):
        process_known = aliases(SETTINGS[process_of(deployment)]) | PLANNED_SETTINGS
        names = {e["name"] for e in container.get("env") or []}
        assert names <= process_known, f"{name_of(deployment)}: {sorted(names - process_known)}"


@pytest.mark.parametrize("tree", TREES)
def test_credentials_come_only_from_secrets(tree: str) -> None:
    objects = render(tree)
    for config in of_kind(objects, "ConfigMap"):
        leaked = [k for k in config["data"] if SECRET_SETTINGS.search(k)]
        assert not leaked, f"{name_of(config)} holds {leaked}"
    for workload, container in all_containers(objects):
        for name, value in container_env(container, objects).items():
            if SECRET_SETTINGS.search(name):
                assert isinstance(value, SecretRef), f"{name_of(workload)}: {name}"


@pytest.mark.parametrize("tree", TREES)
def test_api_and_worker_pods_differ_only_in_worker_enabled(tree: str) -> None:
    objects = render(tree)
    for service in SERVICES:
        api = named(objects, "Deployment", service)
        worker = named(objects, "Deployment", f"{service}-worker")
        (api_container,) = containers(api)
        (worker_container,) = containers(worker)
        api_env = container_env(api_container, objects)
        worker_env = container_env(worker_container, objects)
        assert api_env.pop("WORKER_ENABLED") == Literal("false")
        assert worker_env.pop("WORKER_ENABLED") == Literal("true")
        assert api_env == worker_env, service
        assert api_container["command"] == worker_container["command"]
        assert api_container["image"] == worker_container["image"]
        assert api_container["volumeMounts"] == worker_container["volumeMounts"]
        assert (
            api["spec"]["template"]["spec"]["volumes"]
            == (worker["spec"]["template"]["spec"]["volumes"])
        )


@pytest.mark.parametrize("tree", TREES)
def test_each_service_has_its_own_database_and_shares_the_event_secret(tree: str) -> None:
    objects = render(tree)
    databases: dict[str, EnvValue] = {}
    event_secrets = set()
    for deployment, _, env in deployment_envs(tree):
        process = process_of(deployment)
        assert databases.setdefault(process, env["DATABASE_URL"]) == env["DATABASE_URL"]
        if process == "gateway":  # its identity store; it neither sends nor receives events
            assert "EVENT_SECRET" not in env
            continue
        event_secrets.add(env["EVENT_SECRET"])
    assert len(set(databases.values())) == len(SERVICES) + 1, databases
    # Publishers sign with it and the receiver verifies: it has to be one value.
    assert len(event_secrets) == 1
    # The migration Job migrates the databases the services use.
    (job,) = of_kind(objects, "Job")
    for container in containers(job):
        env = container_env(container, objects)
        for service in (*SERVICES, "gateway"):
            assert env[f"{service.upper()}_DATABASE_URL"] == databases[service]


@pytest.mark.parametrize("tree", TREES)
def test_payments_are_configured_where_money_moves_only(tree: str) -> None:
    stripe = {"STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET"}
    webhook_secrets: dict[str, EnvValue] = {}
    for deployment, _, env in deployment_envs(tree):
        process = process_of(deployment)
        if process in PAYING:
            assert stripe <= set(env), name_of(deployment)
            assert env["PAYMENT_PROVIDER"] == Literal("stripe")
            webhook_secrets.setdefault(process, env["STRIPE_WEBHOOK_SECRET"])
            assert webhook_secrets[process] == env["STRIPE_WEBHOOK_SECRET"]
        else:
            assert not stripe & set(env), name_of(deployment)
    # Each service has its own webhook endpoint in Stripe, and so its own signing secret.
    assert len(set(webhook_secrets.values())) == len(PAYING)


@pytest.mark.parametrize("tree", TREES)
def test_peers_are_addressed_through_their_services(tree: str) -> None:
    objects = render(tree)
    for deployment, _, env in deployment_envs(tree):
        process = process_of(deployment)
        if process == "gateway":
            for upstream in SERVICES:
                upstream_url = env[f"{upstream.upper()}_URL"]
                assert isinstance(upstream_url, Literal)
                assert service_for(objects, upstream_url.value) == upstream
                assert urlsplit(upstream_url.value).port == PORTS[upstream]
            continue
        subscribers = env.get("EVENT_SUBSCRIBERS", Literal(""))
        assert isinstance(subscribers, Literal)
        pairs = dict(p.split("=", 1) for p in subscribers.value.split(",") if p)
        assert sorted(pairs) == sorted(SUBSCRIBERS[process]), name_of(deployment)
        for name, url in pairs.items():
            assert service_for(objects, url) == name


@pytest.mark.parametrize("tree", TREES)
def test_key_files_are_mounted_from_secrets(tree: str) -> None:
    objects = render(tree)
    for deployment in of_kind(objects, "Deployment"):
        for container in containers(deployment):
            files = mounted_secret_files(deployment, container)
            env = container_env(container, objects)
            expected = (
                "JWT_PRIVATE_KEY_FILE"
                if process_of(deployment) == "gateway"
                else ("JWT_PUBLIC_KEY_FILE")
            )
            assert expected in env, name_of(deployment)
            for name, value in env.items():
                if name.endswith("_FILE"):
                    assert isinstance(value, Literal)
                    assert value.value in files, f"{name_of(deployment)}: {name}"
            # The signing key never leaves the gateway.
            if process_of(deployment) != "gateway":
                assert "JWT_PRIVATE_KEY_FILE" not in env
                assert not any(s == "qunbuy-jwt-private" for s, _ in files.values())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_shares_rate_limits_when_it_has_more_than_one_replica(overlay: str) -> None:
    objects = render(overlay)
    (container,) = containers(named(objects, "Deployment", "gateway"))
    redis = container_env(container, objects)["REDIS_URL"]
    assert isinstance(redis, SecretRef)
    if named(objects, "HorizontalPodAutoscaler", "gateway")["spec"]["maxReplicas"] > 1:
        assert not redis.optional, "replicas would each keep their own rate limits"


def test_the_documented_secrets_are_exactly_those_read() -> None:
    documented = documented_secrets()
    assert documented, f"no Secret table found in {DOCS}"
    read: dict[tuple[str, str], set[str]] = {}
    for tree in TREES:
        for ref, readers in secret_readers(tree).items():
            read.setdefault(ref, set()).update(readers)
    assert set(read) == set().union(*(secret_references(render(t)) for t in TREES))
    assert sorted(documented) == sorted(read)
    for ref, readers in read.items():
        assert documented[ref] == readers, f"{ref}: docs say {documented[ref]}, read by {readers}"


def test_the_docs_say_how_to_render() -> None:
    text = DOCS.read_text()
    assert "kubectl kustomize deploy/k8s/overlays/prod" in text
    assert "pytest tests/deploy" in text
