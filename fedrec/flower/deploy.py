"""``fedrec deploy``: a SuperLink and N SuperNodes on 127.0.0.1, one ``flwr run``, every process stopped.

Layout of ``--out``: the outputs of ``fedrec train`` (written by the ServerApp), plus ``flower/``:
``home/`` (an isolated ``FLWR_HOME`` with the connection in ``config.toml``), ``app/`` (the Flower
app: a pyproject naming :mod:`fedrec.flower.app`), ``run_config.toml`` (the job) and ``logs/``.

Every process started here, and every process they start (SuperExec, ServerApp, ClientApps, some of
them in new sessions), is tracked by PID while the run goes and stopped at the end (SIGTERM, then
SIGKILL), also on errors, Ctrl-C and SIGTERM. All waits are bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from fedrec.config import RunConfig, config_to_json
from fedrec.errors import FedrecError
from fedrec.runtime.checkpoint import CHECKPOINT_NAME

CONNECTION = "fedrec-local"
SERVER_ERROR_FILE = "server_error.txt"  # same name as fedrec.flower.app.SERVER_ERROR_FILE (kept import-light)

APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedrec-flower"
version = "0.1.0"
description = "fedrec federated recommendation on Flower (written by fedrec deploy)"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedrec"

[tool.flwr.app.components]
serverapp = "fedrec.flower.app:server_app"
clientapp = "fedrec.flower.app:client_app"

[tool.flwr.app.config]
job = ""
out-dir = "runs/flower"
nodes = 1
round-timeout = 300.0
connect-timeout = 120.0
resume = false
"""


def _toml_string(text: str) -> str:
    """A TOML basic string (JSON string escaping is valid TOML)."""
    return json.dumps(text)


def write_app(out_dir: Path, config: RunConfig, nodes: int, round_timeout: float, connect_timeout: float,
              resume: bool = False) -> tuple[Path, Path]:
    """Write the Flower app folder and the run config of this job; returns (app dir, run config file)."""
    from fedrec.flower.federation import check_deployable

    check_deployable(config)
    flower_dir = out_dir / "flower"
    app_dir = flower_dir / "app"
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text(APP_PYPROJECT)
    run_config = flower_dir / "run_config.toml"
    job = json.dumps(json.loads(config_to_json(config)), separators=(",", ":"))
    run_config.write_text(
        f"job = {_toml_string(job)}\nout-dir = {_toml_string(str(out_dir.resolve()))}\nnodes = {nodes}\n"
        f"round-timeout = {float(round_timeout)}\nconnect-timeout = {float(connect_timeout)}\n"
        f"resume = {'true' if resume else 'false'}\n")
    return app_dir, run_config


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class LocalCluster:
    """Processes of a loopback deployment, tracked by PID (with their descendants) until stopped."""

    out_dir: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    tracked: dict[int, psutil.Process] = field(default_factory=dict)

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        logs = self.out_dir / "flower" / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.log", "wb") as log_file:
            process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=self.env, cwd=self.out_dir, start_new_session=True)
        self.processes[name] = process
        self.refresh()
        return process

    def refresh(self) -> None:
        """Record every live descendant now, so that processes that outlive their parent are still stopped."""
        for process in self.processes.values():
            try:
                root = psutil.Process(process.pid)
                for member in [root, *root.children(recursive=True)]:
                    self.tracked.setdefault(member.pid, member)
            except psutil.NoSuchProcess:
                continue

    def pids(self) -> list[int]:
        return sorted(self.tracked)

    def alive(self, name: str) -> bool:
        return self.processes[name].poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every tracked process, SIGKILL what is left after ``grace`` seconds, reap children."""
        self.refresh()
        members = [p for p in self.tracked.values() if _running(p)]
        for member in members:
            try:
                member.terminate()
            except psutil.NoSuchProcess:
                pass
        _, survivors = psutil.wait_procs(members, timeout=grace)
        for member in survivors:
            try:
                member.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(survivors, timeout=grace)
        for process in self.processes.values():
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C while the cluster runs (so the cleanup runs), in the main thread."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _bin(name: str) -> str:
    """A Flower executable next to this Python (the venv), else on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FedrecError(f"{name} not found; install Flower with pip install 'fedrec[flower]'")
    return found


def _wait(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise FedrecError(what)
        time.sleep(poll)


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][-300:] if lines else ""


def _run_status(cluster: LocalCluster, run_id: str) -> tuple[str, str]:
    """(status, details) of a run as the SuperLink reports it."""
    result = subprocess.run([_bin("flwr"), "ls", CONNECTION, "--run-id", run_id, "--format", "json"],
                            capture_output=True, text=True, env=cluster.env, timeout=60, cwd=cluster.out_dir)
    try:
        runs = json.loads(result.stdout).get("runs", [])
    except json.JSONDecodeError:
        return "", ""
    for run in runs:
        if str(run.get("run-id")) == run_id:
            return str(run.get("status", "")), str(run.get("status-details", ""))
    return "", ""


def deploy(config: RunConfig, nodes: int, out_dir: Path, round_timeout: float = 300.0, connect_timeout: float = 120.0,
           on_round: Callable[[dict[str, Any]], None] | None = None,
           on_cluster: Callable[[LocalCluster], None] | None = None, resume: bool = False) -> dict[str, Any]:
    """Run the job on a loopback Flower deployment with ``nodes`` SuperNodes; returns the final metrics.

    Every SuperNode keeps its state in ``out_dir/flower/nodes`` after each round; ``resume`` continues an
    interrupted run in ``out_dir`` from its checkpoint and those states (same config and --nodes).

    The whole run is bounded: start-up by ``connect_timeout``, each round (and evaluation) by
    ``round_timeout``. ``on_cluster`` is called once the processes run (tests use it to find PIDs).
    """
    if nodes < 1:
        raise FedrecError(f"--nodes must be at least 1, got {nodes}")
    from fedrec.flower.federation import check_deployable
    from fedrec.flower.secure import STAGES, check_secure_deployment

    check_deployable(config)
    check_secure_deployment(config, nodes)
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume and ((out_dir / CHECKPOINT_NAME).exists() or (out_dir / "metrics.json").exists()):
        raise FedrecError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
    shown_round = 0  # history lines up to this round were shown (by the interrupted run)
    if resume and (out_dir / CHECKPOINT_NAME).exists():
        from fedrec.flower.federation import load_deployment

        saved = load_deployment(out_dir, config)  # a one-line error here rather than from inside the ServerApp
        shown_round = int(saved[1]["round"]) if saved is not None else 0
    (out_dir / SERVER_ERROR_FILE).unlink(missing_ok=True)
    app_dir, run_config = write_app(out_dir, config, nodes, round_timeout, connect_timeout, resume)
    home = out_dir / "flower" / "home"
    home.mkdir(parents=True, exist_ok=True)
    link_port, *node_ports = free_ports(1 + nodes)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "127.0.0.1:{link_port}"\n'
        "insecure = true\n")
    env = dict(os.environ, FLWR_HOME=str(home.resolve()), FLWR_TELEMETRY_ENABLED="0",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    cluster = LocalCluster(out_dir, env)
    history = out_dir / "history.jsonl"
    with _terminate_as_interrupt():
        try:
            cluster.start("superlink", [_bin("flower-superlink"), "--insecure", "--port", str(link_port),
                                        "--disable-runtime-dependency-installation"])
            _wait(lambda: port_open(link_port) or not cluster.alive("superlink"), connect_timeout,
                  f"the SuperLink did not open port {link_port} within {connect_timeout:.0f} s; "
                  f"see {out_dir}/flower/logs/superlink.log")
            if not cluster.alive("superlink"):
                raise FedrecError(f"the SuperLink exited at start ({_last_line(out_dir / 'flower/logs/superlink.log')}); "
                                  f"see {out_dir}/flower/logs/superlink.log")
            data_dir = config.data.data_dir or os.environ.get("FEDREC_DATA", "")
            state_dir = out_dir / "flower" / "nodes"  # every node's saved states, for --resume
            for index, port in enumerate(node_ports):
                node_config = f"partition-id={index} num-partitions={nodes} state-dir={json.dumps(str(state_dir))}"
                if data_dir:
                    node_config += f" data-dir={json.dumps(str(Path(data_dir).resolve()))}"
                cluster.start(f"supernode-{index}", [
                    _bin("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link_port}",
                    "--port", str(port), "--node-config", node_config])
            if on_cluster is not None:
                on_cluster(cluster)
            metrics_file = out_dir / "metrics.json"
            previous_metrics = metrics_file.stat().st_mtime_ns if metrics_file.exists() else None

            def finished() -> bool:  # this run's metrics.json (a resumed run's earlier one does not count)
                return metrics_file.exists() and metrics_file.stat().st_mtime_ns != previous_metrics

            submitted = subprocess.run(
                [_bin("flwr"), "run", str(app_dir), CONNECTION, "--run-config", str(run_config), "--format", "json"],
                capture_output=True, text=True, env=env, timeout=connect_timeout, cwd=out_dir)
            try:
                answer = json.loads(submitted.stdout)
            except json.JSONDecodeError:
                answer = {}
            if not answer.get("success"):
                reason = answer.get("error-message") or (submitted.stderr or submitted.stdout).strip()[-300:]
                raise FedrecError(f"flwr run failed: {' '.join(str(reason).split())}")
            run_id = str(answer["run-id"])
            # nodes connecting and describing themselves, then each round (training, the secure-aggregation
            # stages, evaluation) and a final evaluation
            exchanges = 2 + (len(STAGES) if config.privacy.secure_aggregation else 0)
            bound = 2 * connect_timeout + (exchanges * config.train.rounds + 2) * round_timeout
            deadline = time.monotonic() + bound
            next_status = time.monotonic() + 15.0
            while True:
                cluster.refresh()
                if history.exists():
                    records = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
                    for record in records:
                        if record["round"] > shown_round:
                            if on_round is not None:
                                on_round(record)
                            shown_round = record["round"]
                if finished():
                    return json.loads(metrics_file.read_text())
                if (out_dir / SERVER_ERROR_FILE).exists():
                    raise FedrecError((out_dir / SERVER_ERROR_FILE).read_text().strip())
                if not cluster.alive("superlink"):
                    raise FedrecError(f"the SuperLink stopped during the run; see {out_dir}/flower/logs/superlink.log")
                if time.monotonic() > next_status:
                    status, details = _run_status(cluster, run_id)
                    if status.startswith("finished") and not finished():
                        time.sleep(1.0)  # the ServerApp may still be writing its files
                        if not finished() and not (out_dir / SERVER_ERROR_FILE).exists():
                            raise FedrecError(f"the Flower run ended ({status}) without results: {details or 'no details'}; "
                                              f"see {out_dir}/flower/logs/")
                    next_status = time.monotonic() + 15.0
                if time.monotonic() > deadline:
                    raise FedrecError(f"the deployment did not finish within its time bound ({bound:.0f} s); "
                                      f"see {out_dir}/flower/logs/")
                time.sleep(0.5)
        finally:
            cluster.stop()
