"""``coordinator view``: the network results served from the results store, in a browser.

A small read-only web server (Python's ``http.server``, no web framework, nothing fetched
from the internet) over the same pages as the offline ``report.html``: tabs per diagnostic
and analysis, tables with search, per-column filters (cohort, site, strata ...), sorting,
paging and CSV download, incidence/prevalence by year, age and sex with CIs, KM with CI bands
and risk tables, forest plots with I², lower-bound marks and provenance. Pages are built
from the store on first request and kept in memory (the pooled result itself is pooled once and kept in the results store,
:mod:`coordinator.pooling.cache`); ``/reload`` rebuilds them.

Routes: ``/`` (the stored studies), ``/m/<manifest id>`` (a study's page),
``/m/<manifest id>/results.csv`` (the network ``summarised_result``, R-importable),
``/m/<manifest id>/results.csv.gz``.
"""

from __future__ import annotations

import html
import logging
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from coordinator.store import ResultsStore, StoreError, packing

log = logging.getLogger(__name__)
_ID = re.compile(r"^/m/([A-Za-z0-9_.-]{1,80})(/results\.csv(\.gz)?)?/?$")


def open_store(url: str) -> ResultsStore:
    """The store at ``url`` (a file or SQLAlchemy URL); a missing file is an error, never created."""
    if "://" not in url and not Path(url).is_file():
        raise StoreError(f"results store {url} not found (run a study or the demo first, or pass --store)")
    return ResultsStore.open(url)


class Pages:
    """Rendered pages per manifest, built once from the store (thread-safe)."""

    def __init__(self, store: ResultsStore):
        self.store = store
        self._cache: dict[str, tuple[str, bytes]] = {}
        self._gz: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def index(self) -> str:
        from coordinator.report import page_html

        rows = self.store.manifests()
        items = "".join(
            f'<tr><td><a href="/m/{html.escape(r.manifest_id)}">{html.escape(r.study_id)} '
            f"{html.escape(r.study_version)}</a></td><td>{html.escape(r.spec_name or '')}</td>"
            f"<td>{html.escape(r.manifest_id)}</td><td>{r.issued_at:%Y-%m-%d %H:%M}</td>"
            f"<td>{r.n_bundles} of {len(r.target_sites)}</td></tr>" for r in rows)
        body = ("<h2>Studies in the results store</h2>" + (
            "<table><thead><tr><th>study</th><th>spec</th><th>manifest</th><th>issued (UTC)</th>"
            f"<th>site bundles</th></tr></thead><tbody>{items}</tbody></table>" if rows else
            "<p>The store holds no study yet.</p>"))
        return page_html("optima-federated results", "<h1>optima-federated results viewer</h1>",
                         [("studies", "Studies", body)])

    def study(self, manifest_id: str) -> tuple[str, bytes]:
        from coordinator.report import render_report

        with self._lock:
            if manifest_id not in self._cache:
                page, csv_bytes = render_report(self.store, manifest_id)
                links = (f'<p class="links"><a href="/">all studies</a> · <a href="/m/{manifest_id}/results.csv">'
                         f'network results.csv</a> · <a href="/m/{manifest_id}/results.csv.gz">results.csv.gz</a></p>')
                page = page.replace("</header>", links + "</header>", 1)
                self._cache[manifest_id] = (page, csv_bytes)
            return self._cache[manifest_id]

    def csv_gz(self, manifest_id: str) -> bytes:
        """The study's network CSV gzip-compressed, once (the page and the CSV are built from the kept pooled result)."""
        _, csv_bytes = self.study(manifest_id)
        with self._lock:
            if manifest_id not in self._gz:
                self._gz[manifest_id] = packing.compress(csv_bytes)
            return self._gz[manifest_id]

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._gz.clear()


def make_server(store: ResultsStore, host: str = "127.0.0.1", port: int = 8050) -> ThreadingHTTPServer:
    pages = Pages(store)

    class Handler(BaseHTTPRequestHandler):
        server_version = "optima-viewer"

        def log_message(self, fmt, *args):  # to the logger, not stderr
            log.info("%s " + fmt, self.address_string(), *args)

        def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            try:
                if path in ("/", "/index.html"):
                    return self._send(200, pages.index().encode(), "text/html; charset=utf-8")
                if path == "/reload":
                    pages.clear()
                    return self._send(303, b"", "text/plain", {"Location": "/"})
                m = _ID.match(path)
                if not m:
                    return self._send(404, b"not found", "text/plain; charset=utf-8")
                page, csv_bytes = pages.study(m.group(1))
                if m.group(3):
                    return self._send(200, pages.csv_gz(m.group(1)), "application/gzip",
                                      {"Content-Disposition": f'attachment; filename="{m.group(1)}-results.csv.gz"'})
                if m.group(2):
                    return self._send(200, csv_bytes, "text/csv; charset=utf-8",
                                      {"Content-Disposition": f'attachment; filename="{m.group(1)}-results.csv"'})
                return self._send(200, page.encode(), "text/html; charset=utf-8")
            except StoreError as exc:
                return self._send(404, str(exc).encode(), "text/plain; charset=utf-8")
            except Exception as exc:  # one request fails, the server keeps serving
                log.exception("request %s failed", path)
                return self._send(HTTPStatus.INTERNAL_SERVER_ERROR, f"error: {type(exc).__name__}: {exc}".encode(),
                                  "text/plain; charset=utf-8")

    try:
        return ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        raise StoreError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


__all__ = ["Pages", "make_server", "open_store"]
