"""A local Flower deployment: one SuperLink and a SuperNode per site, as real processes.

Used by ``coordinator demo`` and the end-to-end tests, and the same commands a real
deployment runs (see ``deploy/``): TLS with the network's own CA and SuperNode
authentication (each site's key registered with ``flwr supernode register``); the SuperLink
listens on 127.0.0.1 only. Every process gets its own ``FLWR_HOME`` under the work folder and
its own process group, so :meth:`LocalNetwork.stop` leaves nothing behind, even the
``flwr-clientapp``/``flwr-serverapp`` children Flower starts per message.
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
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.trust.pki import Pki, create_pki
from optima_common.errors import NetworkError

APP_DIR = Path(__file__).resolve().parents[1] / "flower_app"  # coordinator/flower_app
FEDERATION = "optima"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    found = Path(sys.executable).parent / name
    if found.exists():
        return str(found)
    path = shutil.which(name)
    if not path:
        raise NetworkError(f"{name} not found; install flwr==1.42.0 in this environment")
    return path


@dataclass
class NodeSpec:
    site: str
    site_config: Path  # the site's TOML (node config "site-config")
    extra_node_config: dict[str, str] = field(default_factory=dict)


@dataclass
class LocalNetwork:
    workdir: Path
    nodes: list[NodeSpec]
    secure: bool = True
    port: int = 0
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    pki: Pki | None = None

    # --- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> LocalNetwork:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _env(self, home: str) -> dict[str, str]:
        env = dict(os.environ)
        env["FLWR_HOME"] = str(self.workdir / home)
        env.setdefault("MPLCONFIGDIR", str(self.workdir / "mpl"))
        env["PYTHONUNBUFFERED"] = "1"
        return flower_env(env)

    def _spawn(self, name: str, cmd: list[str], home: str) -> subprocess.Popen:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        fh = open(logs / f"{name}.log", "ab")
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=self._env(home),
                                cwd=self.workdir, start_new_session=True)
        fh.close()
        self.procs[name] = proc
        return proc

    def _tls_args(self) -> list[str]:
        return [] if not self.secure else ["--root-certificates", str(self.pki.ca_cert)]

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        if self.secure:
            self.pki = create_pki(self.workdir / "pki", [n.site for n in self.nodes], force=True)
            link_args = ["--ssl-ca-certfile", str(self.pki.ca_cert), "--ssl-certfile", str(self.pki.server_cert),
                         "--ssl-keyfile", str(self.pki.server_key), "--enable-supernode-auth"]
        else:
            link_args = ["--insecure"]
        self._write_cli_config()
        self._spawn("superlink", [_bin("flower-superlink"), *link_args, "--host", "127.0.0.1", "--port",
                                  str(self.port), "--database", str(self.workdir / "superlink.db"),
                                  "--disable-runtime-dependency-installation"], "flwr_home")
        self._wait_listening(timeout)
        for node in self.nodes:
            self.start_node(node)

    def start_node(self, node: NodeSpec) -> subprocess.Popen:
        """Register (secure mode) and start the SuperNode of one site."""
        if self.secure:
            self._flwr("supernode", "register", str(self.pki.node_pub(node.site)), FEDERATION, ok_if="already")
            auth = ["--auth-supernode-private-key", str(self.pki.node_key(node.site))]
        else:
            auth = ["--insecure"]
        config = {"site-config": str(node.site_config), **node.extra_node_config}
        node_config = " ".join(f"{k}={json.dumps(str(v))}" for k, v in config.items())
        return self._spawn(f"supernode-{node.site}", [
            _bin("flower-supernode"), *auth, *self._tls_args(), "--superlink", f"127.0.0.1:{self.port}",
            "--port", str(free_port()), "--node-config", node_config, "--max-wait-time", "60"],
            f"home-{node.site}")

    def kill_node(self, site: str) -> None:
        """SIGKILL a site's SuperNode and everything it started (a crashed site)."""
        proc = self.procs.pop(f"supernode-{site}")
        _killpg(proc, signal.SIGKILL)

    def stop(self) -> None:
        for name in list(self.procs)[::-1]:
            _killpg(self.procs.pop(name), signal.SIGTERM)

    # --- runs --------------------------------------------------------------------------------
    def run(self, mode: str, job: dict, *, timeout: float) -> dict:
        """``flwr run`` the app with a job; returns the ServerApp's outcome.json (or raises)."""
        return flwr_run(mode, job, workdir=self.workdir, env=self._env("flwr_home"), timeout=timeout)

    # --- helpers -----------------------------------------------------------------------------
    def _write_cli_config(self) -> None:
        home = self.workdir / "flwr_home"
        home.mkdir(parents=True, exist_ok=True)
        conn = [f'address = "127.0.0.1:{self.port}"']
        conn.append(f'root-certificates = {json.dumps(str(self.pki.ca_cert))}' if self.secure else "insecure = true")
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{FEDERATION}"\n\n[superlink.{FEDERATION}]\n' + "\n".join(conn) + "\n",
            encoding="utf-8")

    def _flwr(self, *args: str, ok_if: str = "") -> str:
        proc = subprocess.run([_bin("flwr"), *args], env=self._env("flwr_home"), cwd=self.workdir,
                              capture_output=True, text=True, timeout=60)
        text = proc.stdout + proc.stderr
        if proc.returncode != 0 and not (ok_if and ok_if in text):
            raise NetworkError(f"flwr {' '.join(args[:2])} failed: {text.strip().splitlines()[-1:]}")
        return text

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs["superlink"]
            if proc.poll() is not None:
                raise NetworkError(f"the SuperLink exited (code {proc.returncode}); see "
                                   f"{self.workdir / 'logs' / 'superlink.log'}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.2)
        raise NetworkError(f"the SuperLink did not listen on 127.0.0.1:{self.port} within {timeout:g} s")


def flower_env(env: dict[str, str]) -> dict[str, str]:
    """The environment of every Flower process we start.

    Flower starts its helpers (flower-superexec, flwr-clientapp) from PATH: ours go first.
    Flower's telemetry is off: by default every Flower process posts events (with the host's
    platform details) to Flower's servers, and each ClientApp process waits up to 4 s for that
    post at exit - on a site's network without a route out, that wait is in every message round.
    """
    here = str(Path(sys.executable).parent)
    return {**env, "PATH": os.pathsep.join([here, env.get("PATH", "")]), "FLWR_TELEMETRY_ENABLED": "0"}


def flwr_run(mode: str, job: dict, *, workdir: Path, env: dict[str, str] | None = None,
             federation: str = FEDERATION, timeout: float) -> dict:
    """Start the network app on a SuperLink with ``flwr run`` and return the ServerApp's outcome.

    ``env`` carries ``FLWR_HOME`` (whose config.toml names the SuperLink connection
    ``federation``: address and CA certificate). The job file, run config and a copy of the
    app folder are written under ``workdir``; the outcome is ``<job["out"]>/outcome.json``.
    """
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "outcome.json").unlink(missing_ok=True)
    job_file = out / f"job-{mode}.json"
    job_file.write_text(json.dumps(job, indent=2, default=str), encoding="utf-8")
    app = workdir / "app"
    if not app.exists():
        shutil.copytree(APP_DIR, app, ignore=shutil.ignore_patterns("__pycache__"))
    run_config = workdir / f"run-{mode}.toml"
    run_config.write_text(f"mode = {json.dumps(mode)}\njob = {json.dumps(str(job_file))}\n", encoding="utf-8")
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run([_bin("flwr"), "run", str(app), federation, "--run-config", str(run_config),
                               "--stream"], env=flower_env(dict(env or os.environ)), cwd=workdir, timeout=timeout, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        raise NetworkError(f"the {mode} run did not finish within {timeout:g} s (logs in {logs})") from None
    (logs / f"run-{mode}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    outcome = _read_outcome(out)
    if outcome is None:
        raise NetworkError(f"the {mode} run ended without an outcome (flwr exit {proc.returncode}): "
                           f"{flwr_message(proc.stdout + proc.stderr)} (log: {logs / f'run-{mode}.log'})")
    return outcome


_BOX = "\u2500\u2502\u256d\u256e\u256f\u2570\u2574\u2576\ufffd"


def flwr_message(text: str) -> str:
    """The message of flwr's last error panel (rich draws it in a box), as one plain line; else
    its last plain line."""
    lines = text.splitlines()
    start = max((i for i, ln in enumerate(lines) if ln.lstrip().startswith("\u256d") and "Error" in ln), default=None)
    if start is not None:
        body = []
        for ln in lines[start + 1:]:
            if ln.lstrip().startswith("\u2570"):
                break
            body.append(ln.strip().strip(_BOX).strip())
        words = " ".join(b for b in body if b)
        if words:
            return words
    plain = [ln.strip().strip(_BOX).strip() for ln in lines]
    plain = [ln for ln in plain if ln]
    return plain[-1] if plain else "no output"


def _read_outcome(out: Path) -> dict | None:
    try:
        return json.loads((out / "outcome.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _killpg(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
    try:  # children Flower started in the same group (clientapp/superexec) after the leader died
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
