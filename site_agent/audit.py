"""The site's append-only, hash-chained audit log (one JSON object per line).

Every entry is ``{seq, time, event, manifest_id, study_id, detail, prev_hash, hash}`` where
``seq`` counts from 1, ``time`` is UTC ISO 8601, ``prev_hash`` is the previous entry's hash
(64 zeros for the first) and ``hash = sha256(prev_hash + canonical JSON of the entry without
"hash")`` (canonical: sorted keys, no whitespace, UTF-8). Editing, deleting or reordering a
line breaks the chain at that line, which :meth:`AuditLog.verify` reports. Cutting lines off
the *end* leaves a valid shorter chain: compare :meth:`AuditLog.head` with a copy kept
elsewhere (e.g. the coordinator's receipt of the last bundle) to detect that.

Writers take an exclusive lock (``filelock``: fcntl on POSIX, msvcrt on Windows) on ``<log>.lock``, open the log in append mode,
write one line and fsync, so concurrent agents on one host interleave whole entries.

**No person-level data** (guard, :func:`check_detail`): ``manifest_id``/``study_id`` and
``detail`` values must be ``None``/bool/int/float, strings of at most ``MAX_STR`` characters,
or lists of at most ``MAX_LIST`` such scalars (no nested lists or dicts), and no key may name
a person-level field (``person_id``, ``subject_id``, ``patient_id``, ``*_source_value``,
birth dates, …). Anything else raises :class:`AuditGuardError` and nothing is written: the
log records decisions and aggregates' metadata, never rows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

from optima_common.errors import AuditError, AuditGuardError

GENESIS = "0" * 64
MAX_STR = 300
MAX_LIST = 50
MAX_KEYS = 50
FORBIDDEN_KEY = re.compile(
    r"(^|_)(person|subject|patient|member|individual)s?_?(id|ids|key|keys)$"
    r"|source_value|(^|_)(birth|dob)|date_of_birth|(^|_)(ssn|mrn|nhs_number|address)$",
    re.IGNORECASE,
)
_SCALARS = (type(None), bool, int, float, str)


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, non-ASCII kept: the bytes the hash chain is computed on."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def entry_hash(entry: dict[str, Any]) -> str:
    """sha256(prev_hash + canonical JSON of the entry without its ``hash``)."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256((entry["prev_hash"] + canonical_json(body)).encode("utf-8")).hexdigest()


def _check_scalar(where: str, v: Any) -> None:
    if not isinstance(v, _SCALARS):
        raise AuditGuardError(f"audit guard: {where} is a {type(v).__name__}; only scalars and short lists")
    if isinstance(v, str) and len(v) > MAX_STR:
        raise AuditGuardError(f"audit guard: {where} is a string of {len(v)} characters (max {MAX_STR})")


def check_detail(detail: dict[str, Any]) -> None:
    """Raise :class:`AuditGuardError` if ``detail`` could carry person-level data."""
    if not isinstance(detail, dict):
        raise AuditGuardError(f"audit guard: detail must be a dict, not {type(detail).__name__}")
    if len(detail) > MAX_KEYS:
        raise AuditGuardError(f"audit guard: detail has {len(detail)} keys (max {MAX_KEYS})")
    for key, value in detail.items():
        if not isinstance(key, str) or len(key) > 64:
            raise AuditGuardError(f"audit guard: detail key {str(key)[:64]!r} is not a short string")
        if FORBIDDEN_KEY.search(key):
            raise AuditGuardError(f"audit guard: detail key {key!r} names person-level data")
        if isinstance(value, (list, tuple)):
            if len(value) > MAX_LIST:
                raise AuditGuardError(f"audit guard: detail[{key!r}] is a list of {len(value)} items (max {MAX_LIST})")
            for i, item in enumerate(value):
                _check_scalar(f"detail[{key!r}][{i}]", item)
        else:
            _check_scalar(f"detail[{key!r}]", value)


class AuditLog:
    """Append-only hash-chained JSON-lines log at ``path`` (created with its folder)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    def append(self, event: str, *, manifest_id: str | None = None, study_id: str | None = None,
               detail: dict[str, Any] | None = None, **more: Any) -> dict[str, Any]:
        """Write one entry (extra keyword fields go into ``detail``) and return it."""
        detail = {**(detail or {}), **more}
        if not (isinstance(event, str) and re.fullmatch(r"[a-z_]{1,32}", event)):
            raise AuditGuardError(f"audit guard: event {event!r} is not a short lower-case word")
        _check_scalar("manifest_id", manifest_id)
        _check_scalar("study_id", study_id)
        check_detail(detail)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(self.lock_path)):  # portable (fcntl on POSIX, msvcrt on Windows)
                last = self._last_entry()
                entry: dict[str, Any] = {
                    "seq": (last["seq"] + 1) if last else 1,
                    "time": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
                    "event": event,
                    "manifest_id": manifest_id,
                    "study_id": study_id,
                    "detail": detail,
                    "prev_hash": last["hash"] if last else GENESIS,
                }
                entry["hash"] = entry_hash(entry)
                line = canonical_json(entry) + "\n"
                new = not self.path.exists()
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(line)
                    fh.flush()
                    os.fsync(fh.fileno())
                if new:
                    _fsync_dir(self.path.parent)
        except (TypeError, ValueError) as exc:  # e.g. NaN: not JSON
            raise AuditGuardError(f"audit guard: entry is not plain JSON ({exc})") from None
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot append to the audit log ({exc.strerror})") from None
        return entry

    def _last_entry(self) -> dict[str, Any] | None:
        """The last line, read backwards from the end (the log may be long)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                end = pos = fh.tell()
                buf = b""
                while pos > 0 and buf.count(b"\n") < 2:
                    step = min(4096, pos)
                    pos -= step
                    fh.seek(pos)
                    buf = fh.read(step) + buf
        except FileNotFoundError:
            return None
        if end == 0:
            return None
        if not buf.endswith(b"\n"):
            raise AuditError(f"{self.path}: last line is incomplete; run verify before appending")
        try:
            last = json.loads(buf.rstrip(b"\n").rsplit(b"\n", 1)[-1])
            if not isinstance(last, dict) or last.get("hash") != entry_hash(last):
                raise ValueError
        except (ValueError, KeyError, TypeError, AttributeError):
            raise AuditError(f"{self.path}: last entry is damaged; refusing to extend a broken chain") from None
        return last

    def entries(self) -> Iterator[dict[str, Any]]:
        """Entries in file order (not checked: use :meth:`verify`)."""
        try:
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        yield json.loads(line)
        except FileNotFoundError:
            return

    def head(self) -> tuple[int, str]:
        """(last seq, last hash), (0, GENESIS) when empty: an anchor to keep elsewhere."""
        last = self._last_entry()
        return (last["seq"], last["hash"]) if last else (0, GENESIS)

    def verify(self) -> tuple[bool, int | None, str]:
        """Check the whole chain: ``(ok, first broken seq or None, message)``."""
        prev, expect = GENESIS, 1
        try:
            fh = open(self.path, encoding="utf-8")
        except FileNotFoundError:
            return True, None, "empty audit log"
        with fh:
            for lineno, line in enumerate(fh, 1):
                try:
                    entry = json.loads(line)
                    seq = entry["seq"]
                    stored = entry["hash"]
                    prev_hash = entry["prev_hash"]
                except (ValueError, KeyError, TypeError):
                    return False, expect, f"line {lineno}: not an audit entry (entry {expect} expected)"
                if seq != expect:
                    return False, expect, (f"line {lineno}: seq {seq} where {expect} was expected "
                                           "(an entry was deleted or reordered)")
                if prev_hash != prev:
                    return False, expect, f"entry {seq}: prev_hash does not match entry {seq - 1}"
                if entry_hash(entry) != stored:
                    return False, expect, f"entry {seq}: hash mismatch (the line was edited)"
                prev, expect = stored, expect + 1
        return True, None, f"{expect - 1} entries, chain intact"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
