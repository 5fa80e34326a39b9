"""A Ray cluster of several nodes on this one machine, for the tests (README, "On a cluster").

Each node is `ray start ... --block` in its own process group, bound to 127.0.0.1, on ports
picked free for it; token authentication is on (Ray's default) with a token of this cluster
alone, in its own file (RAY_AUTH_TOKEN_PATH), so ~/.ray/auth_token and other clusters are left
alone. `stop()` ends only what it started: each `ray start --block` (which takes its node's
processes with it), then any process still naming this cluster's temp folder.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))
# `ray start` turns --node-ip-address=127.0.0.1 into the machine's address, and a node on that
# address listens on every interface. This machine's Ray counts as single-machine with
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which keeps 127.0.0.1 (servers bound there alone) for the
# head and the drivers, but refuses to start a second node; so a worker node starts through Ray's
# own CLI with the address lookup answering 127.0.0.1.
WORKER_NODE = [sys.executable, "-c", "import ray._private.services as s; s.get_node_ip_address = "
               "lambda address=None: '127.0.0.1'; from ray.scripts.scripts import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    def __init__(self, cpus_per_node: list[int], gpus_per_node: int = 0):
        """`gpus_per_node`: GPUs each node declares to Ray (fake ones on a machine without any)."""
        # Short: Ray's Unix sockets live under it (a path limit of 107 characters).
        self.temp = Path(tempfile.mkdtemp(prefix="hs-ray-", dir="/tmp"))
        self.token_file = self.temp / "auth_token"
        self.token_file.write_text(secrets.token_hex(32))
        self.port, self.dashboard_port = free_port(), free_port()
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_file),
                    "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                    # `ray job stop` SIGKILLs a job 3 s after its SIGTERM by default: on a busy machine the
                    # search's graceful stop (Ray's last state save, the resume line) needs longer
                    "RAY_JOB_STOP_WAIT_TIME_S": "60"}
        self.env.pop("RAY_AUTH_TOKEN", None)
        self.env.pop("RAY_ADDRESS", None)
        self.procs: list[subprocess.Popen] = []
        self.cpus_per_node, self.gpus_per_node = cpus_per_node, gpus_per_node

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()

    def start(self, timeout: float = 90.0) -> "LocalCluster":
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        for i, cpus in enumerate(self.cpus_per_node):
            common = ["--block", f"--num-cpus={cpus}", f"--num-gpus={self.gpus_per_node}",
                      f"--resources={json.dumps({f'node_{i}': 1})}", f"--dashboard-agent-listen-port={free_port()}",
                      f"--metrics-export-port={free_port()}", "--disable-usage-stats"]
            if i == 0:
                cmd = [RAY, "start", "--head", f"--port={self.port}", f"--temp-dir={self.temp}",
                       "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                       f"--ray-client-server-port={free_port()}", *common]
            else:
                cmd = [*WORKER_NODE, "start", f"--address={self.address}", *common]
            log = open(self.temp / f"node_{i}.log", "wb")
            env = {**self.env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0" if i == 0 else "1"}
            self.procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))
            self.wait_for_nodes(i + 1, timeout)

    def wait_for_nodes(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, p in enumerate(self.procs):
                if p.poll() is not None:
                    raise RuntimeError(f"ray start (node {i}) exited: {(self.temp / f'node_{i}.log').read_text()[-2000:]}")
            out = subprocess.run([RAY, "list", "nodes", "--address", self.dashboard, "--format", "json",
                                  "--filter", "state=ALIVE"], env=self.env, capture_output=True, text=True)
            if out.returncode == 0:
                try:
                    if len(json.loads(out.stdout)) >= n:
                        return
                except ValueError:
                    pass
            time.sleep(1.0)
        raise TimeoutError(f"{n} Ray node(s) not alive after {timeout:.0f} s; see {self.temp}/node_*.log")

    def run(self, args: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
        """A command on this cluster's token (a driver, `ray job submit`, ...)."""
        return subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout, **kwargs)

    @contextmanager
    def hold(self, node: int, timeout: float = 120.0):
        """Every CPU of node `node` taken by an actor of a driver of the test's own: while it is held, work
        the cluster schedules runs on the other nodes: a placement the test controls, not the scheduler's luck."""
        script = ("import sys, time, ray\n"
                  "ray.init(address=sys.argv[1], log_to_driver=False)\n"
                  "Hold = ray.remote(num_cpus=int(sys.argv[2]), resources={sys.argv[3]: 1})(type('Hold', (), "
                  "{'ready': lambda self: True}))\n"
                  "h = Hold.remote(); ray.get(h.ready.remote()); print('held', flush=True); time.sleep(3600)\n")
        proc = subprocess.Popen([sys.executable, "-c", script, self.address, str(self.cpus_per_node[node]),
                                 f"node_{node}"], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            line = ""
            while "held" not in line:  # readline blocks; the deadline guards a holder that died
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"could not hold node {node}'s CPUs (exit {proc.poll()})")
                line = proc.stdout.readline()
            yield
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # its driver ends, and Ray ends the actor with it
            proc.wait()

    def node_ids(self) -> dict[str, str]:
        """`node_<i>` (the custom resource each node declares) -> its Ray node id."""
        out = self.run([RAY, "list", "nodes", "--address", self.dashboard, "--format", "json", "--detail"], timeout=60)
        return {r: n["node_id"] for n in json.loads(out.stdout) for r in n["resources_total"] if r.startswith("node_")}

    def stop(self) -> None:
        for p in reversed(self.procs):  # workers first, then the head
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5  # `ray start --block` ends its node on SIGTERM; Ray's grace is longer
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)  # what is left of the node's process group
            except ProcessLookupError:
                pass
        left = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if str(self.temp) in " ".join(proc.info["cmdline"] or []):
                    left.append(proc)
                    proc.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        psutil.wait_procs(left, timeout=10)
        shutil.rmtree(self.temp, ignore_errors=True)
