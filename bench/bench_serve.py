"""Load test of ``fedrec serve``: a bounded wrk run on loopback against ``GET /recommend``.

Trains (or takes, ``--run``) an ML-100K run, starts ``fedrec serve`` in a subprocess for each
``--workers`` setting, and drives it with ``wrk`` at a fixed concurrency for a fixed time, cycling
through every user ID. Reports requests/s and p50/p99 latency (wrk's closed loop: 50 connections,
each sending its next request when the last one is answered) in BENCHMARKS.md.

Target (issue 8): >= 1,000 requests/s with p99 <= 50 ms at 50 concurrent requests on 2 cores.
wrk runs on the same machine and takes CPU from the server, so the figures are a lower bound.

    FEDREC_DATA=/path/to/data python bench/bench_serve.py                 # ~3 minutes, writes BENCHMARKS.md
    FEDREC_DATA=/path/to/data python bench/bench_serve.py --quick --no-write   # smoke run, prints only

wrk: Debian/Ubuntu ``apt-get install wrk``; macOS ``brew install wrk``; else build it from
https://github.com/wg/wrk (``make``) and put it on PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "ml100k-mf-fedavg.toml"
TARGET_RPS, TARGET_P99_MS = 1000.0, 50.0

# wrk script: every request asks for another user's list; done() prints exact figures as JSON.
WRK_SCRIPT = """
local users = {%s}
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/recommend?user=" .. users[(n %% #users) + 1] .. "&k=%d")
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_JSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, ' ..
    '"max_us": %%d, "non_2xx": %%d, "socket_errors": %%d}\\n', summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, e.status,
    e.connect + e.read + e.write + e.timeout))
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fedrec_command() -> list[str]:
    return [sys.executable, "-m", "fedrec.cli"]


def train_run(out_dir: Path, rounds: int | None) -> Path:
    if (out_dir / "metrics.json").is_file():
        return out_dir
    args = [*fedrec_command(), "train", str(CONFIG), "--out", str(out_dir), "--quiet"]
    if rounds is not None:
        args += ["--set", f"train.rounds={rounds}"]
    subprocess.run(args, check=True, cwd=ROOT)
    return out_dir


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"fedrec serve exited with code {process.returncode} before answering")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"fedrec serve did not answer {url}/health within {timeout:.0f} s")


def user_ids(url: str) -> list[str]:
    with urllib.request.urlopen(url + "/users?limit=10000", timeout=10) as response:
        return json.loads(response.read())["users"]


def run_wrk(wrk: str, url: str, users: list[str], k: int, connections: int, threads: int, seconds: int) -> dict:
    script = WRK_SCRIPT % (", ".join(json.dumps(u) for u in users), k)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        result = subprocess.run([wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
                                 "-s", handle.name, url], capture_output=True, text=True, check=True)
    finally:
        os.unlink(handle.name)
    line = next(line for line in result.stdout.splitlines() if line.startswith("WRK_JSON "))
    stats = json.loads(line[len("WRK_JSON "):])
    stats["rps"] = stats["requests"] / (stats["duration_us"] / 1e6)
    return stats


def server_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by the server and its worker processes."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure(run_dir: Path, workers: int, args: argparse.Namespace, wrk: str) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([*fedrec_command(), "serve", str(run_dir), "--port", str(port), "--workers", str(workers)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        health = wait_healthy(url, server)
        users = user_ids(url)
        time.sleep(2.0 if workers > 1 else 0.0)  # let every worker finish loading before the clock starts
        run_wrk(wrk, url, users, args.k, args.connections, args.threads, 1)  # warm-up
        cpu_before = server_cpu_seconds(server.pid)
        stats = run_wrk(wrk, url, users, args.k, args.connections, args.threads, args.duration)
        stats["cpu_us_per_request"] = (server_cpu_seconds(server.pid) - cpu_before) / max(stats["requests"], 1) * 1e6
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    stats["workers"], stats["health"] = workers, health
    return stats


def report(results: list[dict], args: argparse.Namespace, health: dict) -> str:
    lines = [f"`GET /recommend?user=ID&k={args.k}` on the {health['model']} run of {health['dataset']} "
             f"({health['users']} users, {health['items']} items), every user in turn; "
             f"wrk with {args.connections} connections ({args.threads} threads) for {args.duration} s on loopback, "
             "on the same machine as the server.", "",
             "| server workers | requests/s | p50 latency | p90 | p99 | max | non-2xx | socket errors | server CPU per request | target met |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---|"]
    for r in results:
        met = r["rps"] >= TARGET_RPS and r["p99_us"] / 1000 <= TARGET_P99_MS and r["non_2xx"] == 0
        lines.append(f"| {r['workers']} | {r['rps']:,.0f} | {r['p50_us'] / 1000:.1f} ms | {r['p90_us'] / 1000:.1f} ms | "
                     f"{r['p99_us'] / 1000:.1f} ms | {r['max_us'] / 1000:.1f} ms | {r['non_2xx']} | {r['socket_errors']} | "
                     f"{r['cpu_us_per_request']:.0f} us | {'yes' if met else 'no'} |")
    lines += ["", f"Target: >= {TARGET_RPS:,.0f} requests/s with p99 <= {TARGET_P99_MS:.0f} ms at 50 concurrent requests. "
              "Each user's ranked list is computed once at start-up; a request is a lookup plus a cached JSON body. "
              "Server CPU per request (user + system time of the server processes over the run, divided by the requests "
              "answered) shows what a request costs independently of other load on the machine."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a finished run directory (default: train configs/ml100k-mf-fedavg.toml)")
    parser.add_argument("--duration", type=int, default=30, help="seconds of load per setting")
    parser.add_argument("--connections", type=int, default=50, help="concurrent requests")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="fedrec serve --workers settings to measure")
    parser.add_argument("-k", type=int, default=10, help="K of each /recommend request")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 training rounds, 3 s of load, 1 worker")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing BENCHMARKS.md")
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk not found: apt-get install wrk (Debian/Ubuntu), brew install wrk (macOS), "
                         "or build https://github.com/wg/wrk and put it on PATH")
    if args.quick:
        args.duration, args.workers = min(args.duration, 3), args.workers[:1]
    with tempfile.TemporaryDirectory(prefix="fedrec-bench-serve-") as scratch:
        run_dir = args.run or train_run(Path(scratch) / "ml100k-mf", 3 if args.quick else None)
        results = []
        for workers in args.workers:
            results.append(measure(run_dir, workers, args, wrk))
            print(f"workers={workers}: {results[-1]['rps']:,.0f} requests/s, p50 {results[-1]['p50_us'] / 1000:.1f} ms, "
                  f"p99 {results[-1]['p99_us'] / 1000:.1f} ms", flush=True)
    body = report(results, args, results[0]["health"])
    if args.no_write:
        print(body)
    else:
        from _report import write_section

        write_section("serve", "HTTP service under load (fedrec serve, wrk)", body)
        print("wrote the serve section of BENCHMARKS.md")


if __name__ == "__main__":
    main()
