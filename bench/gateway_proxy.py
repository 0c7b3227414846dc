"""Gateway proxy throughput: direct vs gateway vs nginx, same upstream, same run.

    .venv/bin/python bench/gateway_proxy.py [--seconds 10] [--connections 32] [--rounds 3]
    BENCH_RATE_LIMITS=false ...   # the same with the gateway's rate limits off, to see their cost

Each round measures every target once, in an order that rotates from round to round (the
machine's speed drifts: a fixed order would favour whichever target runs first); the
figures printed are each target's median over the rounds, and the gateway's share of
nginx's throughput round by round.

Needs `wrk` and `nginx` on PATH (Debian: `apt-get install wrk nginx-light`); without nginx
the nginx row is skipped. Prints requests/s, p50/p99 latency and the gateway's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qunbuy.platform import APPS, SERVER_OPTIONS  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def uvicorn(
    app: str, port: int, env: dict[str, str], factory: bool, options: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """A stand-in, quiet: uvicorn as it comes, or with ``options`` (production's)."""
    argv = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--no-access-log", "--log-level", "warning"] + (["--factory"] if factory else [])
    argv += [o for o in options if o != "--no-access-log"]
    return subprocess.Popen(argv, env={**os.environ, **env}, cwd=ROOT)


def production(name: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A process (``gateway``, ``orders``...) started as production starts it (deploy/,
    Dockerfile): the same options, the default log levels; only the host and port differ."""
    argv = [sys.executable, "-m", "uvicorn", APPS[name], "--factory"]
    argv += ["--host", "127.0.0.1", "--port", str(port), *SERVER_OPTIONS[name]]
    return subprocess.Popen(argv, env={**os.environ, **env}, cwd=ROOT)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * _UNITS[unit]


def wrk(url: str, seconds: int, connections: int, headers: list[str]) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", *headers, url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "non_2xx": float(errors.group(1)) if errors else 0,
    }


def dev_token(port: int) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/auth/dev-login",
        data=b'{"roles": ["customer"]}',
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        token: str = json.loads(response.read())["access_token"]
        return token


NGINX_CONF = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  upstream app {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Request-ID $request_id;
    }}
  }}
}}
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="qb-bench-"))
    ports = {"upstream": free_port(), "gateway": free_port(), "nginx": free_port()}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        upstream = uvicorn("bench.upstream:app", ports["upstream"], {}, factory=False)
        procs.append(upstream)
        gateway_env = {
            "QUNBUY_MODE": "embedded",
            "JWT_PRIVATE_KEY_FILE": str(tmp / "jwt.pem"),
            "ORDERS_URL": f"http://127.0.0.1:{ports['upstream']}",
            # Rate limits on, as in production (the check runs on every request), with a
            # limit this run never reaches.
            "RATE_LIMIT_READ": "100000000/minute",
            "RATE_LIMITS_ENABLED": os.environ.get("BENCH_RATE_LIMITS", "true"),
        }
        gateway = production("gateway", ports["gateway"], gateway_env)
        procs.append(gateway)
        targets = {
            "direct (uvicorn upstream)": f"http://127.0.0.1:{ports['upstream']}/v1/orders/o1",
            "qunbuy gateway": f"http://127.0.0.1:{ports['gateway']}/v1/orders/o1",
        }
        if shutil.which("nginx"):
            (tmp / "nginx.conf").write_text(
                NGINX_CONF.format(tmp=tmp, upstream=ports["upstream"], port=ports["nginx"])
            )
            nginx = subprocess.Popen(
                ["nginx", "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"],
            )
            procs.append(nginx)
            targets["nginx proxy"] = f"http://127.0.0.1:{ports['nginx']}/v1/orders/o1"
        for url in targets.values():
            wait_http(url)
        # Authenticated, as a signed-in customer's requests are: the gateway counts them
        # under the token's user id.
        headers = ["-H", f"Authorization: Bearer {dev_token(ports['gateway'])}"]
        for url in targets.values():  # warm-up: pools filled, code paths hot
            wrk(url, 2, args.connections, headers)
        names = list(targets)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for round_no in range(args.rounds):
            shift = round_no % len(names)
            for name in names[shift:] + names[:shift]:
                runs[name].append(wrk(targets[name], args.seconds, args.connections, headers))
        rss = peak_rss_mib(gateway.pid)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)

    results = {
        name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()
    }
    direct = results["direct (uvicorn upstream)"]["rps"]
    print(
        f"{args.connections} connections, {args.seconds}s per target, {args.rounds} rounds, "
        f"2 wrk threads, {os.cpu_count()} CPUs; medians over the rounds"
    )
    print(f"{'target':<28}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'vs direct':>11}{'non-2xx':>9}")
    for name, r in results.items():
        print(
            f"{name:<28}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            f"{r['rps'] / direct:>10.0%}{int(r['non_2xx']):>9}"
        )
    if "nginx proxy" in runs:
        shares = [
            g["rps"] / n["rps"]
            for g, n in zip(runs["qunbuy gateway"], runs["nginx proxy"], strict=True)
        ]
        print(
            "gateway / nginx by round: "
            + ", ".join(f"{x:.0%}" for x in shares)
            + f" (median {statistics.median(shares):.0%})"
        )
    print(f"gateway peak RSS: {rss:.1f} MiB")
    print(json.dumps({"results": results, "gateway_peak_rss_mib": rss}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
