"""The ``qunbuy`` command, run as a real process against real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import make_url

from qunbuy.pg import EmbeddedPostgres, database_url, drop_databases, ensure_databases
from qunbuy.supervisor import _healthy
from shared.db import make_engine
from shared.migrations import DATABASES, alembic_config
from tests.helpers import free_port, free_ports

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0

pytestmark = pytest.mark.xdist_group("cli")


# --- helpers -----------------------------------------------------------------------------


def base_env(**extra: str) -> dict[str, str]:
    """This process's environment without any database URL or mode: ``qunbuy`` decides."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("DATABASE_URL") and k not in ("QUNBUY_MODE", "EVENT_SECRET")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Cli:
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kills what this test started: the qunbuy process and its process group."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: its group id is its pid
    for child in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


@contextlib.contextmanager
def qunbuy(args: list[str], env: dict[str, str], logs: Path) -> Iterator[Cli]:
    """``python -m qunbuy.cli ARGS`` in the background; everything it started dies after."""
    tag = uuid.uuid4().hex[:8]
    out, err = logs / f"qunbuy-{tag}.out", logs / f"qunbuy-{tag}.err"
    with out.open("wb") as out_file, err.open("wb") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qunbuy.cli", *args],
            cwd=ROOT,
            env=env,
            stdout=out_file,
            stderr=err_file,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        yield Cli(proc, out, err)
    finally:
        _kill_group(proc)


def run(args: list[str], env: dict[str, str], logs: Path, timeout: float = 60) -> Cli:
    """Runs ``qunbuy ARGS`` to completion (killed after ``timeout`` seconds)."""
    with qunbuy(args, env, logs) as cli:
        try:
            cli.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"qunbuy {' '.join(args)} still running after {timeout} s: {cli.stderr}")
        return cli


def get_json(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_ready(cli: Cli, gateway: str, timeout: float = START_TIMEOUT) -> dict[str, object]:
    """Waits until the gateway's /readyz answers 200 and the banner is printed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cli.proc.poll() is not None:
            pytest.fail(f"qunbuy up exited with {cli.proc.returncode}: {cli.stderr}")
        try:
            status, body = get_json(f"{gateway}/readyz")
        except (OSError, ValueError):
            status, body = 0, {}
        if status == 200 and "Qunbuy is running" in cli.stdout:
            return body
        time.sleep(0.2)
    pytest.fail(f"qunbuy up not ready after {timeout} s: {cli.stderr}")


def stop(cli: Cli, sig: signal.Signals, *, group: bool) -> tuple[int, float]:
    """Sends ``sig`` to qunbuy (or to its whole group, as Ctrl-C does); exit code, seconds."""
    started = time.monotonic()
    if group:
        os.killpg(cli.proc.pid, sig)
    else:
        cli.proc.send_signal(sig)
    try:
        code = cli.proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"qunbuy did not stop within {STOP_TIMEOUT} s after {sig.name}")
    return code, time.monotonic() - started


def postgres_processes(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(data_dir) in cmdline and "postgres" in cmdline:
            found.append(proc)
    return found


def sql(url: str, statement: str, **params: object) -> list[tuple[object, ...]]:
    async def go() -> list[tuple[object, ...]]:
        engine = make_engine(url, pool_size=1)
        try:
            async with engine.begin() as conn:
                result = await conn.execute(text(statement), params)
                return [tuple(r) for r in result.all()] if result.returns_rows else []
        finally:
            await engine.dispose()

    return asyncio.run(go())


def head(service: str) -> str:
    revision = ScriptDirectory.from_config(alembic_config(service, "")).get_current_head()
    assert revision is not None
    return revision


@pytest.fixture
def db_env(pg_server_url: str) -> Iterator[dict[str, str]]:
    """Four fresh, empty databases of this test, as <SERVICE>_DATABASE_URL variables."""
    names = {s: f"qbt_cli_{uuid.uuid4().hex[:10]}_{s}" for s in DATABASES}
    asyncio.run(ensure_databases(pg_server_url, list(names.values()), fresh=True))
    try:
        yield {
            f"{s.upper()}_DATABASE_URL": database_url(pg_server_url, name)
            for s, name in names.items()
        }
    finally:
        asyncio.run(drop_databases(pg_server_url, list(names.values())))


def urls(db_env: dict[str, str]) -> dict[str, str]:
    return {s: db_env[f"{s.upper()}_DATABASE_URL"] for s in DATABASES}


# --- qunbuy up ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "group"),
    [(signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["SIGTERM-to-qunbuy", "SIGINT-to-the-group-like-ctrl-c"],
)
def test_up_serves_then_stops_on_a_signal(
    db_env: dict[str, str], tmp_path: Path, sig: signal.Signals, group: bool
) -> None:
    base = free_ports(5)
    gateway = f"http://127.0.0.1:{base}"
    args = ["up", "--port-base", str(base), "--data-dir", str(tmp_path / "data")]
    with qunbuy(args, base_env(**db_env), tmp_path) as cli:
        ready = wait_ready(cli, gateway)
        assert ready == {
            "status": "ready",
            "services": {"orders": "ready", "crowdfund": "ready", "referrals": "ready"},
        }
        for offset in range(4):  # gateway, orders, crowdfund, referrals
            status, body = get_json(f"http://127.0.0.1:{base + offset}/healthz")
            assert (status, body) == (200, {"status": "ok"})
        assert "configured PostgreSQL" in cli.stdout
        assert f"gateway    http://127.0.0.1:{base}" in cli.stdout

        children = psutil.Process(cli.proc.pid).children(recursive=True)
        commands = sorted(" ".join(c.cmdline()) for c in children)
        assert len(children) == 5, commands  # the four processes and the fake WeChat
        for app in ("gateway.app", "services.orders.app", "qunbuy.fake_wechat"):
            assert any(app in command for command in commands), commands
        assert (tmp_path / "data" / "keys" / "jwt-private.pem").exists()

        code, seconds = stop(cli, sig, group=group)
        assert code == 0, cli.stderr
        assert seconds < STOP_TIMEOUT
        _, alive = psutil.wait_procs(children, timeout=5)
        assert alive == [], [p.pid for p in alive]
        assert cli.stdout.rstrip().endswith("Qunbuy stopped.")
        assert "Traceback" not in cli.stderr
        with pytest.raises(urllib.error.URLError):  # the gateway port is free again
            urllib.request.urlopen(f"{gateway}/healthz", timeout=1)


def test_up_stops_cleanly_when_signalled_during_start_up(
    db_env: dict[str, str], tmp_path: Path
) -> None:
    base = free_ports(5)
    args = ["up", "--port-base", str(base), "--data-dir", str(tmp_path / "data")]
    with qunbuy(args, base_env(**db_env), tmp_path) as cli:
        deadline = time.monotonic() + START_TIMEOUT
        children: list[psutil.Process] = []
        while len(children) < 5 and time.monotonic() < deadline:  # all five spawned
            assert cli.proc.poll() is None, cli.stderr
            children = psutil.Process(cli.proc.pid).children(recursive=True)
            time.sleep(0.05)
        assert len(children) == 5
        code, _ = stop(cli, signal.SIGTERM, group=False)
        assert code == 0, cli.stderr
        _, alive = psutil.wait_procs(children, timeout=5)
        assert alive == []
        assert "Traceback" not in cli.stderr


def children_by_app(cli: Cli) -> dict[str, psutil.Process]:
    found = {}
    for child in psutil.Process(cli.proc.pid).children(recursive=True):
        command = " ".join(child.cmdline())
        for name in ("gateway", "orders", "crowdfund", "referrals"):
            if f"{name}.app:create_app" in command:
                found[name] = child
    return found


def test_up_stops_everything_when_one_service_dies(db_env: dict[str, str], tmp_path: Path) -> None:
    base = free_ports(5)
    args = ["up", "--port-base", str(base), "--data-dir", str(tmp_path / "data")]
    with qunbuy(args, base_env(**db_env), tmp_path) as cli:
        wait_ready(cli, f"http://127.0.0.1:{base}")
        children = children_by_app(cli)
        assert set(children) == {"gateway", "orders", "crowdfund", "referrals"}
        children["orders"].kill()
        try:
            code = cli.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail("qunbuy up kept running without the orders service")
        assert code != 0
        _, alive = psutil.wait_procs(list(children.values()), timeout=5)
        assert alive == []
        lines = cli.stderr_lines()
        assert len(lines) == 1, cli.stderr
        assert "orders stopped unexpectedly" in lines[0]


def test_services_do_not_outlive_a_killed_supervisor(
    db_env: dict[str, str], tmp_path: Path
) -> None:
    """Even SIGKILL, which qunbuy cannot handle, leaves no orphaned service behind."""
    base = free_ports(5)
    args = ["up", "--port-base", str(base), "--data-dir", str(tmp_path / "data")]
    with qunbuy(args, base_env(**db_env), tmp_path) as cli:
        wait_ready(cli, f"http://127.0.0.1:{base}")
        children = list(children_by_app(cli).values())
        assert len(children) == 4
        cli.proc.kill()
        cli.proc.wait(5)
        _, alive = psutil.wait_procs(children, timeout=STOP_TIMEOUT)
        assert alive == [], [" ".join(p.cmdline()) for p in alive]


@pytest.mark.parametrize("offset", [0, 1], ids=["gateway-port", "orders-port"])
def test_up_refuses_a_port_in_use(db_env: dict[str, str], tmp_path: Path, offset: int) -> None:
    base = free_ports(5)
    port = base + offset
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        started = time.monotonic()
        cli = run(
            ["up", "--port-base", str(base), "--data-dir", str(tmp_path / "data")],
            base_env(**db_env),
            tmp_path,
            timeout=30,
        )
    assert cli.proc.returncode != 0
    assert time.monotonic() - started < 30
    lines = cli.stderr_lines()
    assert len(lines) == 1, cli.stderr
    assert str(port) in lines[0]
    assert "already in use" in lines[0]
    assert "--port-base" in lines[0]  # and what to do about it
    # Nothing was migrated: it stopped before touching the databases.
    assert sql(urls(db_env)["orders"], "SELECT to_regclass('alembic_version')::text") == [(None,)]


@pytest.mark.parametrize("how", ["service-urls", "server-url"])
def test_up_reports_an_unreachable_database(tmp_path: Path, how: str) -> None:
    closed = free_port()
    if how == "server-url":
        env = base_env(QUNBUY_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{closed}/postgres")
    else:
        env = base_env(
            **{
                f"{s.upper()}_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed}/qb_{s}"
                for s in DATABASES
            }
        )
    started = time.monotonic()
    cli = run(
        ["up", "--port-base", str(free_ports(5)), "--data-dir", str(tmp_path / "data")],
        env,
        tmp_path,
        timeout=30,
    )
    assert time.monotonic() - started < 30
    assert cli.proc.returncode != 0
    lines = cli.stderr_lines()
    assert len(lines) == 1, cli.stderr
    assert lines[0].startswith("qunbuy: cannot use")
    assert "DATABASE_URL" in lines[0]
    assert str(closed) in lines[0]


def test_up_reports_a_refused_login_in_one_line(pg_server_url: str, tmp_path: Path) -> None:
    stranger = make_url(pg_server_url).set(username="no_such_role_qb", password=None)
    env = base_env(QUNBUY_DATABASE_URL=stranger.render_as_string(hide_password=False))
    cli = run(["migrate", "--data-dir", str(tmp_path / "data")], env, tmp_path, timeout=30)
    assert cli.proc.returncode != 0
    lines = cli.stderr_lines()
    assert len(lines) == 1, cli.stderr
    assert lines[0].startswith("qunbuy: cannot use PostgreSQL")
    assert "no_such_role_qb" in lines[0]


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_development_mode_refuses_to_listen_beyond_loopback(tmp_path: Path, host: str) -> None:
    cli = run(["up", "--host", host, "--data-dir", str(tmp_path / "data")], base_env(), tmp_path)
    assert cli.proc.returncode != 0
    lines = cli.stderr_lines()
    assert len(lines) == 1, cli.stderr
    assert "loopback only" in lines[0]
    assert "QUNBUY_MODE=production" in lines[0]
    assert not (tmp_path / "data" / "postgres").exists()


def test_up_reports_a_failed_migration(db_env: dict[str, str], tmp_path: Path) -> None:
    orders = urls(db_env)["orders"]
    sql(orders, "CREATE TABLE outbox (id text PRIMARY KEY, note text)")
    base = free_ports(5)
    cli = run(
        ["up", "--port-base", str(base), "--data-dir", str(tmp_path / "data")],
        base_env(**db_env),
        tmp_path,
        timeout=60,
    )
    assert cli.proc.returncode != 0
    lines = cli.stderr_lines()
    assert len(lines) == 1, cli.stderr
    assert lines[0].startswith("qunbuy: migrating orders failed")
    assert "outbox" in lines[0]
    assert "services/orders/migrations" in lines[0]
    # The failed migration was rolled back as a whole, and no process was left serving.
    assert sql(orders, "SELECT to_regclass('inbox')::text") == [(None,)]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{base}/healthz", timeout=1)


def test_production_mode_never_falls_back_to_the_embedded_server(tmp_path: Path) -> None:
    cli = run(
        ["up", "--port-base", str(free_ports(5)), "--data-dir", str(tmp_path / "data")],
        base_env(QUNBUY_MODE="production"),
        tmp_path,
        timeout=30,
    )
    assert cli.proc.returncode != 0
    lines = cli.stderr_lines()
    assert len(lines) == 1, cli.stderr
    assert "no database URL is configured" in lines[0]
    assert not (tmp_path / "data" / "postgres").exists()


@pytest.fixture
def embedded_home() -> Iterator[Path]:
    """A directory for an embedded server, outside pytest's temporary directories.

    Run as root, the embedded PostgreSQL runs as another user, which must traverse every
    parent directory; pytest keeps /tmp/pytest-of-<user> private (0700) and any pytest
    session that starts meanwhile closes it again, which would lock the server out.
    """
    home = ROOT / ".qunbuy" / "test-cli" / uuid.uuid4().hex[:12]
    home.mkdir(parents=True)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_up_embedded_default_keeps_its_data(
    tmp_path: Path, embedded_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No database URL: a PostgreSQL of its own in <data-dir>/postgres, kept between runs."""
    data_dir = embedded_home / "data"
    pg_dir = data_dir / "postgres"
    # EmbeddedPostgres (used below, in this process) defaults XDG_RUNTIME_DIR in os.environ.
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(embedded_home / "run"))
    env = base_env()
    event_id = uuid.uuid4().hex
    try:

        def run_up() -> None:
            base = free_ports(5)
            args = ["up", "--port-base", str(base), "--data-dir", str(data_dir)]
            with qunbuy(args, env, tmp_path) as cli:
                wait_ready(cli, f"http://127.0.0.1:{base}")
                assert f"embedded PostgreSQL in {pg_dir}" in cli.stdout
                assert postgres_processes(pg_dir), "the embedded server runs from the data dir"
                code, _ = stop(cli, signal.SIGTERM, group=False)
                assert code == 0, cli.stderr
            _, alive = psutil.wait_procs(postgres_processes(pg_dir), timeout=10)
            assert alive == [], "the embedded PostgreSQL outlived qunbuy up"

        run_up()
        key = (data_dir / "keys" / "jwt-private.pem").read_bytes()

        server = EmbeddedPostgres(pg_dir)
        orders = database_url(server.start(), "qunbuy_orders")
        try:
            assert sql(orders, "SELECT version_num FROM alembic_version") == [(head("orders"),)]
            sql(
                orders,
                "INSERT INTO inbox (source, event_id, event_type) VALUES ('test', :id, 'kept')",
                id=event_id,
            )
        finally:
            server.stop()

        run_up()  # the same data dir again: nothing is re-initialised
        assert (data_dir / "keys" / "jwt-private.pem").read_bytes() == key

        server = EmbeddedPostgres(pg_dir)
        orders = database_url(server.start(), "qunbuy_orders")
        try:
            kept = sql(orders, "SELECT event_type FROM inbox WHERE event_id = :id", id=event_id)
            assert kept == [("kept",)]
        finally:
            server.stop()
    finally:
        for leftover in postgres_processes(pg_dir):
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()


def test_up_stops_the_embedded_server_it_adopted_after_a_killed_supervisor(
    tmp_path: Path, embedded_home: Path
) -> None:
    """SIGKILL leaves the embedded server running; the next run adopts it and stops it."""
    data_dir = embedded_home / "data"
    pg_dir = data_dir / "postgres"
    env = base_env(XDG_RUNTIME_DIR=str(embedded_home / "run"))
    try:
        base = free_ports(5)
        args = ["up", "--port-base", str(base), "--data-dir", str(data_dir)]
        with qunbuy(args, env, tmp_path) as cli:
            wait_ready(cli, f"http://127.0.0.1:{base}")
            cli.proc.kill()  # no chance to clean up
            cli.proc.wait(10)
        assert postgres_processes(pg_dir), "a killed supervisor cannot stop its server"

        for _ in range(2):  # and every run after it stops what it started
            base = free_ports(5)
            args = ["up", "--port-base", str(base), "--data-dir", str(data_dir)]
            with qunbuy(args, env, tmp_path) as cli:
                wait_ready(cli, f"http://127.0.0.1:{base}")
                code, _ = stop(cli, signal.SIGINT, group=True)
                assert code == 0, cli.stderr
            _, alive = psutil.wait_procs(postgres_processes(pg_dir), timeout=15)
            assert alive == [], "the embedded PostgreSQL outlived qunbuy up"
    finally:
        for leftover in postgres_processes(pg_dir):
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()


# --- qunbuy migrate ----------------------------------------------------------------------


def test_migrate_applies_every_service(db_env: dict[str, str], tmp_path: Path) -> None:
    cli = run(["migrate", "--data-dir", str(tmp_path / "data")], base_env(**db_env), tmp_path)
    assert cli.proc.returncode == 0, cli.stderr
    assert "migrations applied: orders, crowdfund, referrals, gateway" in cli.stdout
    for service, url in urls(db_env).items():
        assert sql(url, "SELECT version_num FROM alembic_version") == [(head(service),)]
        table = "customer" if service == "gateway" else "outbox"  # the identity store's
        assert sql(url, f"SELECT count(*) FROM {table}") == [(0,)]

    again = run(["migrate", "--data-dir", str(tmp_path / "data")], base_env(**db_env), tmp_path)
    assert again.proc.returncode == 0, again.stderr


def test_migrate_one_service(db_env: dict[str, str], tmp_path: Path) -> None:
    """A migration Job gets its own service's URL only."""
    cli = run(
        ["migrate", "--service", "crowdfund", "--data-dir", str(tmp_path / "data")],
        base_env(QUNBUY_MODE="production", CROWDFUND_DATABASE_URL=db_env["CROWDFUND_DATABASE_URL"]),
        tmp_path,
    )
    assert cli.proc.returncode == 0, cli.stderr
    assert "migrations applied: crowdfund" in cli.stdout
    assert not (tmp_path / "data" / "postgres").exists()  # no embedded server either
    dbs = urls(db_env)
    assert sql(dbs["crowdfund"], "SELECT version_num FROM alembic_version") == [
        (head("crowdfund"),)
    ]
    for other in ("orders", "referrals"):
        assert sql(dbs[other], "SELECT to_regclass('alembic_version')::text") == [(None,)]


# --- qunbuy events -----------------------------------------------------------------------


def insert_dead(url: str, event_type: str) -> int:
    rows = sql(
        url,
        "INSERT INTO outbox (event_id, event_type, subscriber, envelope, status, attempts,"
        " last_error) VALUES (:event_id, :event_type, 'referrals', CAST(:envelope AS jsonb),"
        " 'dead', 12, 'HTTP 503 from referrals') RETURNING id",
        event_id=str(uuid.uuid4()),
        event_type=event_type,
        envelope=json.dumps({"type": event_type}),
    )
    value = rows[0][0]
    assert isinstance(value, int)
    return value


def test_jobs_dead_and_redrive(db_env: dict[str, str], tmp_path: Path) -> None:
    env = base_env(**db_env)
    data = ["--data-dir", str(tmp_path / "data")]
    assert run(["migrate", *data], env, tmp_path).proc.returncode == 0
    referrals = urls(db_env)["referrals"]
    insert = (
        "INSERT INTO scheduled_job (kind, key, run_at, payload, status, attempts, last_error)"
        " VALUES (:kind, :key, now(), CAST('{}' AS jsonb), :status, 10, 'RuntimeError: boom')"
        " RETURNING id"
    )
    key = uuid.uuid4().hex[:8]
    [(dead_id,)] = sql(referrals, insert, kind="campaign.close", key=key, status="dead")
    sql(referrals, insert, kind="campaign.close", key=key + "-ok", status="pending")

    listed = run(["jobs", "dead", "--service", "referrals", *data], env, tmp_path)
    assert listed.proc.returncode == 0, listed.stderr
    assert listed.stdout.strip().splitlines() == [
        f"{dead_id}\tcampaign.close\t{key}\t10\tRuntimeError: boom",
        "dead: 1",
    ]
    redriven = run(["jobs", "redrive", "--service", "referrals", *data], env, tmp_path)
    assert redriven.proc.returncode == 0, redriven.stderr
    assert redriven.stdout.startswith("re-driven: 1 jobs")
    state = sql(referrals, "SELECT status, attempts FROM scheduled_job WHERE id = :id", id=dead_id)
    assert state == [("pending", 0)]


def test_events_dead_and_redrive(db_env: dict[str, str], tmp_path: Path) -> None:
    env = base_env(**db_env)
    data = ["--data-dir", str(tmp_path / "data")]
    migrated = run(["migrate", *data], env, tmp_path)
    assert migrated.proc.returncode == 0, migrated.stderr

    dead = run(["events", "dead", "--service", "orders", *data], env, tmp_path)
    assert dead.proc.returncode == 0, dead.stderr
    assert dead.stdout.strip().splitlines() == ["dead: 0"]
    redrive = run(["events", "redrive", "--service", "orders", *data], env, tmp_path)
    assert redrive.proc.returncode == 0, redrive.stderr
    assert redrive.stdout.startswith("re-driven: 0")

    orders = urls(db_env)["orders"]
    first = insert_dead(orders, "order.paid")
    second = insert_dead(orders, "order.refunded")
    sql(
        orders,
        "INSERT INTO outbox (event_id, event_type, subscriber, envelope)"
        " VALUES (:id, 'order.completed', 'referrals', CAST('{}' AS jsonb))",
        id=str(uuid.uuid4()),
    )  # pending: not listed, not touched

    dead = run(["events", "dead", "--service", "orders", *data], env, tmp_path)
    assert dead.proc.returncode == 0, dead.stderr
    lines = dead.stdout.strip().splitlines()
    assert lines == [
        f"{first}\torder.paid\treferrals\t12\tHTTP 503 from referrals",
        f"{second}\torder.refunded\treferrals\t12\tHTTP 503 from referrals",
        "dead: 2",
    ]
    # Another service's outbox is its own.
    crowdfund = run(["events", "dead", "--service", "crowdfund", *data], env, tmp_path)
    assert crowdfund.stdout.strip().splitlines() == ["dead: 0"]

    one = run(
        ["events", "redrive", "--service", "orders", "--id", str(second), *data], env, tmp_path
    )
    assert one.proc.returncode == 0, one.stderr
    assert one.stdout.startswith("re-driven: 1")
    state = "SELECT id, status, attempts FROM outbox WHERE status <> 'pending' OR id = :id"
    assert sorted(sql(orders, state, id=second)) == [(first, "dead", 12), (second, "pending", 0)]

    rest = run(["events", "redrive", "--service", "orders", *data], env, tmp_path)
    assert rest.stdout.startswith("re-driven: 1")
    assert sql(orders, "SELECT count(*) FROM outbox WHERE status = 'dead'") == [(0,)]
    assert sql(orders, "SELECT status, attempts FROM outbox WHERE id = :id", id=first) == [
        ("pending", 0)
    ]


@pytest.mark.parametrize("command", ["dead", "redrive"])
def test_events_report_database_problems_in_one_line(
    db_env: dict[str, str], tmp_path: Path, command: str
) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    closed = free_port()
    unreachable = base_env(
        **{
            f"{s.upper()}_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed}/x"
            for s in DATABASES
        }
    )
    cli = run(["events", command, "--service", "orders", *data], unreachable, tmp_path)
    assert cli.proc.returncode != 0
    lines = cli.stderr_lines()
    assert len(lines) == 1, cli.stderr
    assert "cannot use the orders database" in lines[0]
    assert "ORDERS_DATABASE_URL" in lines[0]

    # Reachable but never migrated: no outbox table yet.
    cli = run(["events", command, "--service", "orders", *data], base_env(**db_env), tmp_path)
    assert cli.proc.returncode != 0
    lines = cli.stderr_lines()
    assert len(lines) == 1, cli.stderr
    assert "qunbuy migrate" in lines[0]


def test_referrals_reconcile_finds_a_commission_its_entries_do_not_add_up_to(
    db_env: dict[str, str], tmp_path: Path
) -> None:
    env = base_env(**db_env)
    data = ["--data-dir", str(tmp_path / "data")]
    assert run(["migrate", *data], env, tmp_path).proc.returncode == 0
    clean = run(["referrals", "reconcile", *data], env, tmp_path)
    assert clean.proc.returncode == 0, clean.stderr
    assert clean.stdout.strip().splitlines()[-1] == "commissions that differ from their entries: 0"
    referrals = urls(db_env)["referrals"]
    merchant = f"m_{uuid.uuid4().hex[:8]}"
    [(distributor,)] = sql(
        referrals,
        "INSERT INTO distributor (id, merchant_id, user_id, code, status, real_name, phone)"
        " VALUES (:id, :m, 'u', :code, 'active', 'Li', '138') RETURNING id",
        id=str(uuid.uuid4()),
        m=merchant,
        code=uuid.uuid4().hex[:8].upper(),
    )
    commission = str(uuid.uuid4())
    sql(
        referrals,
        "INSERT INTO commission (id, source_type, source_id, merchant_id, distributor_id, level,"
        " rate_bps, currency, amount, state) VALUES (:id, 'order', :source, :m, :d, 1, 1000,"
        " 'CNY', 100, 'pending')",
        id=commission,
        source=str(uuid.uuid4()),
        m=merchant,
        d=str(distributor),
    )  # an amount no entry backs: what reconciliation exists to catch
    off = run(["referrals", "reconcile", *data], env, tmp_path)
    assert off.proc.returncode == 1
    assert off.stdout.strip().splitlines() == [
        f"{commission}\tcommission 100\tledger 0",
        "commissions that differ from their entries: 1",
    ]


def test_a_start_up_probe_takes_an_answer_that_is_not_http_for_not_yet_healthy() -> None:
    """A probe of a port in the ephemeral range that nothing listens on yet can connect to
    itself and read back its own request (it did, once, in the suite): that is not ready,
    and not a crash of `qunbuy up`. Here a listener echoes the request back."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def echo() -> None:
            conn, _ = server.accept()
            with conn:
                conn.sendall(conn.recv(4096))

        thread = threading.Thread(target=echo)
        thread.start()
        assert _healthy(f"http://127.0.0.1:{port}/healthz") is False
        thread.join(5)
