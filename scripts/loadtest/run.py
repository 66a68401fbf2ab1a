"""Load test of the flash-sale service with an external HTTP load generator (wrk).

    .venv/bin/python scripts/loadtest/run.py [--duration 15] [--connections 64] [--json]

Starts ``obelisk serve examples.flashsale:app`` on embedded SQLite in a temporary folder,
then runs wrk (Debian's package; installed with apt-get when missing and running as root)
against it, one phase after another:

1. **reservations**: ``POST /reservations`` with unique ids over 40 sections whose stock
   never runs out (every answer a 201: the write path, not cheap refusals);
2. **cached reads**: ``GET /sections/{id}/availability`` — answered from the query cache;
3. **revalidations**: the same with ``If-None-Match``: 304s;
4. **sell-out**: reservations against 4 sections of 500 seats until they are gone, then
   the oversell check: seats held + sold never above stock (from the service's own
   figures, after its read side caught up).

Prints requests/s, latency percentiles (wrk's own), status counts and the service's cache
hit ratio; ``--json`` prints them as one object. The figures in docs/flashsale.md come
from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, env=env)
        found = shutil.which("wrk")
    if not found:
        sys.exit("error: wrk is not installed (apt-get install wrk)")
    return found


def _call(base: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path, data=data, method=method, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        raw = answer.read()
        return json.loads(raw) if raw else None


def _run_wrk(
    wrk: str, url: str, args: argparse.Namespace, *extra: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    command = [
        wrk,
        "-t",
        str(args.threads),
        "-c",
        str(args.connections),
        "-d",
        f"{args.duration}s",
        "--latency",
        *extra,
        url,
    ]
    out = subprocess.run(
        command, capture_output=True, text=True, check=True, env={**os.environ, **(env or {})}
    ).stdout
    result: dict[str, Any] = {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
    }  # type: ignore[index]
    for pct in ("50", "90", "99"):
        found = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\b", out, re.M)
        if found:
            scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[found[2]]
            result[f"p{pct}_ms"] = round(float(found[1]) * scale, 3)
    total = re.search(r"(\d+) requests in", out)
    result["requests"] = int(total[1]) if total else 0
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx_3xx"] = int(errors[1]) if errors else 0
    statuses = re.search(r"status 201=(\d+) 409=(\d+) other=(\d+)", out)
    if statuses:
        result["status"] = {
            "201": int(statuses[1]),
            "409": int(statuses[2]),
            "other": int(statuses[3]),
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds per phase")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    wrk = _wrk()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    results: dict[str, Any] = {"connections": args.connections, "duration_s": args.duration}
    with tempfile.TemporaryDirectory(prefix="obelisk-load-") as folder:
        log = open(Path(folder) / "service.log", "wb")  # noqa: SIM115 - closed below
        service = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "obelisk",
                "serve",
                "examples.flashsale:app",
                "--port",
                str(port),
                "--app-dir",
                str(ROOT),
                "--store",
                f"sqlite:///{folder}/events.db",
            ],
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    _call(base, "GET", "/health")
                    break
                except OSError:
                    if time.monotonic() > deadline or service.poll() is not None:
                        sys.exit(
                            f"the service did not start:\n{Path(folder, 'service.log').read_text()}"
                        )
                    time.sleep(0.2)
            big = [f"big-{i}" for i in range(40)]
            small = [f"small-{i}" for i in range(4)]
            for section in big:
                _call(
                    base,
                    "POST",
                    "/sections",
                    {
                        "section_id": section,
                        "sale_id": "load",
                        "name": section,
                        "stock": 10_000_000,
                    },
                )
            for section in small:
                _call(
                    base,
                    "POST",
                    "/sections",
                    {"section_id": section, "sale_id": "sellout", "name": section, "stock": 500},
                )
            script = str(HERE / "reserve.lua")
            results["reservations"] = _run_wrk(
                wrk, base, args, "-s", script, env={"SECTIONS": ",".join(big), "RUN": "r"}
            )
            read_url = f"{base}/sections/big-0/availability"
            _call(base, "GET", "/sections/big-0/availability")  # in the cache
            results["cached_reads"] = _run_wrk(wrk, read_url, args)
            etag = urllib.request.urlopen(read_url, timeout=10).headers["etag"]
            results["revalidations_304"] = _run_wrk(
                wrk, read_url, args, "-H", f"If-None-Match: {etag}"
            )
            sellout = argparse.Namespace(**{**vars(args), "duration": 5})
            results["sell_out"] = _run_wrk(
                wrk, base, sellout, "-s", script, env={"SECTIONS": ",".join(small), "RUN": "s"}
            )
            time.sleep(1.0)  # the read side catches up (its lag is milliseconds)
            stats = _call(base, "GET", "/dashboard/stats")
            sections = _call(base, "GET", "/sales/sellout/availability")
            results["sell_out"]["stock"] = sum(s["stock"] for s in sections)
            results["sell_out"]["held_plus_sold"] = sum(s["held"] + s["sold"] for s in sections)
            results["oversold"] = sum(max(0, s["held"] + s["sold"] - s["stock"]) for s in sections)
            results["cache"] = stats["cache"]
        finally:
            service.send_signal(signal.SIGINT)
            try:
                service.wait(30)
            except subprocess.TimeoutExpired:
                service.kill()
            log.close()
    if args.json:
        print(json.dumps(results))
    else:
        print(
            f"wrk, {args.connections} connections, {args.duration} s per phase, "
            f"service on embedded SQLite"
        )
        print(f"{'phase':<20} {'requests/s':>11} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
        for phase in ("reservations", "cached_reads", "revalidations_304", "sell_out"):
            r = results[phase]
            print(
                f"{phase:<20} {r['requests_per_s']:>11,.0f} {r.get('p50_ms', 0):>8.2f} "
                f"{r.get('p90_ms', 0):>8.2f} {r.get('p99_ms', 0):>8.2f}"
            )
        print(f"reservations: {results['reservations'].get('status')}")
        print(
            f"sell-out: {results['sell_out'].get('status')}, held+sold "
            f"{results['sell_out']['held_plus_sold']} of stock {results['sell_out']['stock']}, "
            f"oversold {results['oversold']}"
        )
        print(f"cache: {results['cache']}")
    return 0 if results["oversold"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
