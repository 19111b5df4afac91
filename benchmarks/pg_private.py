"""A private, throw-away PostgreSQL cluster for the benchmarks (initdb under a temp dir).

    from benchmarks.pg_private import private_cluster
    with private_cluster(log_min_duration_ms=200) as pg:
        ... pg.url ..., pg.log_path

Uses the server binaries of the local install (Debian keeps ``initdb``/``pg_ctl`` in
``/usr/lib/postgresql/<version>/bin``); as root the cluster runs as the ``postgres`` user.
Settings are those of a small dedicated server (``shared_buffers`` 1 GB, ``fsync`` off
because the cluster is thrown away); ``log_min_duration_statement`` writes every statement
slower than the given milliseconds, with its duration, to ``log_path``, and ``explain_ms``
adds the ``EXPLAIN (ANALYZE, BUFFERS)`` plan of each statement slower than that (auto_explain;
temp-table statements included, which a later EXPLAIN on another connection could not see).
The profile in docs/performance.md comes from there.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def pg_bin() -> Path:
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name),
                         reverse=True):
        if (Path(folder) / "initdb").exists():
            return Path(folder)
    found = shutil.which("initdb")
    if not found:
        raise SystemExit("PostgreSQL server binaries not found (apt-get install postgresql)")
    return Path(found).parent


@dataclass
class PrivateCluster:
    root: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def log_path(self) -> Path:
        return self.root / "log"

    def server_cpu_seconds(self) -> float:
        """CPU seconds used so far by the server: the postmaster, its reaped children (backends,
        parallel workers) and the live ones. On a shared machine this, not wall time, is the
        work PostgreSQL did."""
        pid = int((self.root / "data" / "postmaster.pid").read_text().split()[0])
        tick = os.sysconf("SC_CLK_TCK")

        def fields(p: int) -> list[int]:
            try:
                text = Path(f"/proc/{p}/stat").read_text()
            except OSError:
                return [0, 0, 0, 0]
            return [int(x) for x in text.rsplit(")", 1)[1].split()[11:15]]

        total = sum(fields(pid))
        children = Path(f"/proc/{pid}/task/{pid}/children")
        for child in (children.read_text().split() if children.exists() else []):
            total += sum(fields(int(child))[:2])
        return total / tick


def _run(cmd: list[str]) -> None:
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _options(port: int, sock: Path, log_min_duration_ms: int, shared_buffers: str, explain_ms: int,
             wal_minimal: bool = False) -> str:
    opts = (f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off "
            f"-c shared_buffers={shared_buffers} -c log_min_duration_statement={log_min_duration_ms} "
            "-c max_wal_size=4GB -c shared_preload_libraries=pg_stat_statements,auto_explain "
            "-c pg_stat_statements.track=all -c pg_stat_statements.max=10000")
    if wal_minimal:  # for loading a CDM only: `cdm copy` creates its tables in its transaction, so no WAL for them
        opts += " -c wal_level=minimal -c max_wal_senders=0"
    if explain_ms >= 0:  # auto_explain: the plan of every statement slower than explain_ms, with ANALYZE and BUFFERS
        opts += (f" -c auto_explain.log_min_duration={explain_ms}"
                 " -c auto_explain.log_analyze=on -c auto_explain.log_buffers=on -c auto_explain.log_nested_statements=on")
    return opts


def start_cluster(root: Path, *, log_min_duration_ms: int = -1, shared_buffers: str = "1GB",
                  explain_ms: int = -1, wal_minimal: bool = False) -> PrivateCluster:
    """initdb (unless ``root/data`` exists) and start a cluster under ``root``; its port is kept in ``root/port``.

    ``pg_stat_statements`` and ``auto_explain`` are preloaded (off until asked: ``explain_ms``, or
    ``ALTER DATABASE … SET auto_explain.log_min_duration``), so a kept cluster can be profiled
    without a restart. ``wal_minimal`` (``wal_level=minimal``) is for loading a large CDM: the
    rows of tables created in the loading transaction are then not written to the WAL as well,
    which at 10M persons saves tens of GB of writes and the WAL's disk; restart without it
    (a server's usual ``replica``) before measuring the suite."""
    binary = pg_bin()
    root = Path(root)
    data, sock = root / "data", root / "sock"
    fresh = not data.exists()
    sock.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chmod(root, 0o755)
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (root / "port").write_text(str(port))
    cluster = PrivateCluster(root, port)
    if fresh:
        _run([str(binary / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"])
    opts = _options(port, sock, log_min_duration_ms, shared_buffers, explain_ms, wal_minimal)
    _run([str(binary / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(cluster.log_path), "-w", "start"])
    return cluster


def running_cluster(root: Path) -> PrivateCluster:
    """A cluster started before with ``start_cluster`` (e.g. ``python benchmarks/pg_private.py start DIR``)."""
    root = Path(root)
    if not (root / "data" / "postmaster.pid").exists():
        raise SystemExit(f"no running private cluster under {root}")
    return PrivateCluster(root, int((root / "port").read_text()))


def statements(url: str, *, reset: bool = False, top: int | None = None) -> list[tuple[float, int, str]]:
    """(server seconds, calls, query) from ``pg_stat_statements`` (preloaded by this module's
    clusters), slowest first; ``top`` limits the list. ``reset`` empties the view instead."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.begin() as c:
            c.execute(text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
            if reset:
                c.execute(text("SELECT pg_stat_statements_reset()"))
                return []
            rows = c.execute(text("SELECT total_exec_time / 1000, calls, regexp_replace(query, '\\s+', ' ', 'g') "
                                  "FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT :n"),
                             {"n": top}).all()
            return [(float(sec), int(n), str(q)) for sec, n, q in rows]
    finally:
        engine.dispose()


def stop_cluster(root: Path) -> None:
    _run([str(pg_bin() / "pg_ctl"), "-D", str(Path(root) / "data"), "-m", "fast", "stop"])


@contextmanager
def private_cluster(log_min_duration_ms: int = -1, shared_buffers: str = "1GB", explain_ms: int = -1):
    root = Path(tempfile.mkdtemp(prefix="optima-bench-pg-"))
    try:
        cluster = start_cluster(root, log_min_duration_ms=log_min_duration_ms, shared_buffers=shared_buffers,
                                explain_ms=explain_ms)
        yield cluster
    finally:
        try:
            if (root / "data" / "postmaster.pid").exists():
                _run([str(pg_bin() / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"])
        finally:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    """``start DIR`` / ``stop DIR`` / ``url DIR``: a cluster kept across experiments (e.g. a 1M CDM copied once)."""
    import argparse

    ap = argparse.ArgumentParser(description="a private PostgreSQL cluster kept under DIR")
    ap.add_argument("action", choices=["start", "stop", "url"])
    ap.add_argument("root")
    ap.add_argument("--log-min-duration-ms", type=int, default=-1)
    ap.add_argument("--wal-minimal", action="store_true", help="wal_level=minimal, for loading a CDM (not for measuring)")
    args = ap.parse_args()
    if args.action == "start":
        print(start_cluster(Path(args.root), log_min_duration_ms=args.log_min_duration_ms,
                            wal_minimal=args.wal_minimal).url)
    elif args.action == "stop":
        stop_cluster(Path(args.root))
    else:
        print(running_cluster(Path(args.root)).url)


if __name__ == "__main__":
    main()
