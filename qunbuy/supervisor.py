"""``qunbuy up``: PostgreSQL, migrations, then the four processes, stopped together."""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import FrameType

from qunbuy.commands import prepare_databases
from qunbuy.platform import (
    APPS,
    PORTS,
    SERVER_OPTIONS,
    SUBSCRIBERS,
    PlatformError,
    open_databases,
)
from shared.auth import load_or_create_private_key, public_pem

# The embedded default's stand-in for WeChat (qunbuy/fake_wechat.py), on the port after the
# four processes', and its mini-programs (secrets made afresh each run: its state is memory).
FAKE_WECHAT = "qunbuy.fake_wechat:create_app"
DEV_MINI_PROGRAMS = ("wx0000000000000001", "wx0000000000000002")
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGTERM if the supervisor itself dies, so nothing is orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _check_ports(host: str, ports: dict[str, int]) -> None:
    for name, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise PlatformError(
                    f"port {port} ({name}) on {host} is already in use: stop what is using it, "
                    "or start with --port-base to use other ports"
                ) from exc


# Our own processes on loopback: never through an HTTP proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _healthy(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except (OSError, http.client.HTTPException):
        # HTTPException: not an HTTP answer. A probe of a port in the ephemeral range that
        # nothing listens on yet can connect to itself (TCP simultaneous open) and read its
        # own request back as the answer.
        return False


def _keys(data_dir: Path) -> tuple[Path, Path]:
    private = data_dir / "keys" / "jwt-private.pem"
    key = load_or_create_private_key(private)
    public = data_dir / "keys" / "jwt-public.pem"
    public.write_bytes(public_pem(key))
    return private, public


def _environments(
    host: str,
    ports: dict[str, int],
    urls: dict[str, str],
    private: Path,
    public: Path,
) -> dict[str, dict[str, str]]:
    base = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    # Production mode never runs on the embedded server (open_databases refuses it), so the
    # mode is simply what the operator set, development by default.
    mode = os.environ.get("QUNBUY_MODE", "embedded")
    envs: dict[str, dict[str, str]] = {}
    if "wechat" in ports:
        apps = ",".join(f"{app}={secrets.token_urlsafe(24)}" for app in DEV_MINI_PROGRAMS)
        envs["wechat"] = {**base, "FAKE_WECHAT_APPS": apps}
    for service in ("orders", "crowdfund", "referrals"):
        subscribers = ",".join(
            f"{name}=http://{host}:{ports[name]}" for name in SUBSCRIBERS[service]
        )
        envs[service] = {
            **base,
            "QUNBUY_MODE": mode,
            "DATABASE_URL": urls[service],
            "JWT_PUBLIC_KEY_FILE": str(public),
            "EVENT_SUBSCRIBERS": subscribers,
            "PORT": str(ports[service]),
        }
    envs["gateway"] = {
        **base,
        "QUNBUY_MODE": mode,
        "JWT_PRIVATE_KEY_FILE": str(private),
        "ORDERS_URL": f"http://{host}:{ports['orders']}",
        "CROWDFUND_URL": f"http://{host}:{ports['crowdfund']}",
        "REFERRALS_URL": f"http://{host}:{ports['referrals']}",
        "DATABASE_URL": urls["gateway"],
        "PORT": str(ports["gateway"]),
    }
    if "wechat" in ports:
        envs["gateway"]["WECHAT_API_BASE"] = f"http://{host}:{ports['wechat']}"
        envs["gateway"]["WECHAT_APP_SECRETS"] = envs["wechat"]["FAKE_WECHAT_APPS"]
    return envs


def _stop_all(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in processes.values():
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT
    for proc in processes.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _check_mode(host: str) -> None:
    """The development mode (dev login that mints any role, development secrets) is for
    this machine only: it never listens beyond loopback."""
    if os.environ.get("QUNBUY_MODE", "embedded") != "embedded":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:
            address = ipaddress.ip_address(socket.getaddrinfo(host, None)[0][4][0])
        except OSError as exc:
            raise PlatformError(f"cannot resolve --host {host}: {exc}") from exc
    if not address.is_loopback:
        raise PlatformError(
            f"the development mode listens on loopback only, not {host}: "
            "set QUNBUY_MODE=production (with EVENT_SECRET and the other secrets) to serve others"
        )


def _ports(port_base: int | None) -> dict[str, int]:
    """The processes' ports, and the fake WeChat's when the embedded default runs one (it
    does unless a WeChat is configured)."""
    names = list(PORTS)
    if os.environ.get("QUNBUY_MODE", "embedded") == "embedded" and not os.environ.get(
        "WECHAT_API_BASE"
    ):
        names.append("wechat")
    base = next(iter(PORTS.values())) if port_base is None else port_base
    return {name: base + i for i, name in enumerate(names)}


def run_platform(*, data_dir: Path, host: str, port_base: int | None = None) -> int:
    _check_mode(host)
    ports = _ports(port_base)
    _check_ports(host, ports)
    data_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()

    def on_signal(signum: int, _: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    dbs = open_databases(data_dir)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        prepare_databases(dbs)
        private, public = _keys(data_dir)
        envs = _environments(host, ports, dbs.urls, private, public)
        for name in [*(n for n in ports if n != "gateway"), "gateway"]:
            processes[name] = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    APPS.get(name, FAKE_WECHAT),
                    "--factory",
                    "--host",
                    host,
                    "--port",
                    str(ports[name]),
                    *SERVER_OPTIONS.get(name, ()),
                    "--no-access-log",
                    "--log-level",
                    "warning",
                ],
                env=envs[name],
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only sets the death signal
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        pending = set(processes)
        while pending and not stop.is_set():
            for name in list(pending):
                proc = processes[name]
                if proc.poll() is not None:
                    raise PlatformError(
                        f"{name} exited during start-up (code {proc.returncode}); "
                        "its error is printed above"
                    )
                if _healthy(f"http://{host}:{ports[name]}/healthz"):
                    pending.discard(name)
            if time.monotonic() > deadline:
                raise PlatformError(f"{', '.join(sorted(pending))} did not start within 60 s")
            time.sleep(0.2)
        if not stop.is_set():
            where = (
                "embedded PostgreSQL in " + str(data_dir / "postgres")
                if dbs.embedded
                else "configured PostgreSQL"
            )
            print(f"Qunbuy is running ({where}). Ctrl-C stops everything.", flush=True)
            for name, port in ports.items():
                print(f"  {name:<10} http://{host}:{port}", flush=True)
            print(f"  API docs   http://{host}:{ports['gateway']}/docs", flush=True)
        while not stop.is_set():
            for name, proc in processes.items():
                if proc.poll() is not None:
                    raise PlatformError(f"{name} stopped unexpectedly (code {proc.returncode})")
            stop.wait(0.5)
        return 0
    finally:
        _stop_all(processes)
        dbs.stop()
        print("Qunbuy stopped.", flush=True)
