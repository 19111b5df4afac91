"""Independent jobs on several PostgreSQL connections at once (cohort builds, diagnostic families).

Each PostgreSQL statement runs on one core, and TEMP tables keep parallel workers out, so work on
one connection keeps one core of the server busy. :func:`run_on_connections` opens up to N more
connections like the caller's (URL, schemas, statement timeout, session options), hands the jobs
out in the order given to one worker thread per connection, and passes what each job emits back
to the calling thread, which alone reports and writes anything shared. The first error stops the
run: the other workers' running statements are cancelled (their open transactions roll back),
the threads joined, every worker connection closed, and the error raised as the worker raised it.

DuckDB is one in-process engine that is multi-threaded already: :func:`default_connections` is 1
there, and callers keep their sequential path.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from optima_common.errors import CdmConnectionError, ConfigError
from site_agent.cdm.connection import CdmConnection, connect_cdm

J = TypeVar("J")
S = TypeVar("S")


def default_connections(cdm: CdmConnection) -> int:
    """1 on DuckDB (one in-process engine, multi-threaded already); on PostgreSQL
    ``OPTIMA_PG_CONNECTIONS`` or min(2, cores of this machine)."""
    if not cdm.is_server:
        return 1
    env = os.environ.get("OPTIMA_PG_CONNECTIONS")
    if env:
        return check_connections(int(env) if env.strip().isdigit() else -1, "OPTIMA_PG_CONNECTIONS")
    return min(2, os.cpu_count() or 1)


def check_connections(n: int, what: str = "connections") -> int:
    if n < 1:
        raise ConfigError(f"{what} must be a whole number of 1 or more")
    return n


def open_like(cdm: CdmConnection) -> CdmConnection:
    """Another connection to the same database, schemas and statement timeout."""
    return connect_cdm(cdm.url, cdm_schema=cdm.cdm_schema, write_schema=cdm.write_schema,
                       vocab_schema=cdm.vocab_schema, statement_timeout_seconds=cdm.statement_timeout)


class Worker:
    """What a job sees of its worker: ``emit`` hands an item to the calling thread; ``stopped``
    is true once the run has failed elsewhere (a job of several steps should then return)."""

    def __init__(self, out: queue.Queue, stop: threading.Event):
        self._out, self._stop = out, stop

    def emit(self, item: Any) -> None:
        self._out.put(("item", item))

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()


def run_on_connections(cdm: CdmConnection, jobs: Sequence[J], connections: int, *,
                       setup: Callable[[CdmConnection], S], work: Callable[[S, J, Worker], None],
                       deliver: Callable[[Any], None], say: Callable[[str], None], what: str) -> int:
    """Run ``work(setup(conn), job, worker)`` for every job on up to ``connections`` new
    connections; ``deliver(item)`` is called on this thread for each ``worker.emit(item)``, in
    the order they arrive. Returns the number of connections used: 0 when the server refused
    every one (``max_connections``, a role's ``CONNECTION LIMIT``), and then nothing ran: the
    caller does the jobs itself. Raises the first worker error."""
    todo: queue.Queue = queue.Queue()
    for job in jobs:
        todo.put(job)
    out: queue.Queue = queue.Queue()
    stop = threading.Event()
    conns: list[CdmConnection] = []
    threads: list[threading.Thread] = []

    def loop(conn: CdmConnection) -> None:
        worker = Worker(out, stop)
        try:
            state = setup(conn)
            while not stop.is_set():
                try:
                    job = todo.get_nowait()
                except queue.Empty:
                    return
                work(state, job, worker)
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            out.put(("error", exc))
        finally:
            out.put(("end", None))

    try:
        for _ in range(min(connections, len(jobs))):
            try:
                conns.append(open_like(cdm))
            except CdmConnectionError as exc:
                say(f"{exc}: {what} on {len(conns)} connection(s)" if conns
                    else f"{exc}: {what} on the command's own connection")
                break
        if conns:
            say(f"{what} on {len(conns)} PostgreSQL connections")
        for i, conn in enumerate(conns):
            t = threading.Thread(target=loop, args=(conn,), name=f"pg-worker-{i + 1}", daemon=True)
            threads.append(t)
            t.start()
        running = len(threads)
        while running:
            kind, item = out.get()
            if kind == "end":
                running -= 1
            elif kind == "error":
                raise item
            else:
                deliver(item)
    except BaseException:
        stop.set()
        for conn in conns:
            _cancel(conn)
        raise
    finally:
        stop.set()
        for t in threads:
            t.join()
        for conn in conns:
            conn.close()
    return len(conns)


def _cancel(conn: CdmConnection) -> None:
    """Cancel the statement a worker's connection is running, if any (psycopg2 allows it from
    another thread); the worker then raises, which is ignored as the run has failed already."""
    raw = getattr(getattr(conn._conn, "connection", None), "dbapi_connection", None)
    if raw is not None and hasattr(raw, "cancel"):
        try:
            raw.cancel()
        except Exception:  # noqa: BLE001 - the connection may be closing; join() still waits for it
            pass
