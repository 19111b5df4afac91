"""Files in and out: atomic writes (a reader sees the old file or the whole new one, never half
of it) and config documents read with one-line errors."""

from __future__ import annotations

import json
import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any, TypeVar

M = TypeVar("M")


def write_atomic(path: str | os.PathLike, data: bytes, *, mode: int = 0o644) -> Path:
    """Write ``data`` to a temp file next to ``path`` (``mode``), fsync, then rename it over."""
    return Staged(path, data, mode=mode).commit()


class Staged:
    """``data`` written and fsynced to a temp file next to ``path``; :meth:`commit` renames it over
    ``path``, :meth:`discard` removes it. Lets slow writes run early (e.g. in a thread) and the
    files appear only once everything they belong with is ready."""

    def __init__(self, path: str | os.PathLike, data: bytes, *, mode: int = 0o644):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self.tmp = Path(tmp)
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            self.discard()
            raise

    def commit(self) -> Path:
        try:
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise
        return self.path

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


def read_document(path: str | os.PathLike, *, fmt: str, what: str, error: type[Exception]) -> Any:
    """The parsed JSON or TOML document at ``path``; every failure is one ``error`` line that
    names the file, ``what`` it should be, and where it went wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: the {what} is not a UTF-8 text file") from None
    try:
        if fmt == "toml":
            return tomllib.loads(text)
        return json.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: malformed TOML: {exc}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply to read (the {what} must be a plain document)") from None


def validate_document(model: type[M], doc: Any, path: str | os.PathLike, *, what: str,
                      error: type[Exception]) -> M:
    """``doc`` validated as ``model``; a validation failure is one ``error`` line naming the
    first offending field (and how many more there are)."""
    from pydantic import ValidationError

    from optima_common.errors import validation_summary

    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise error(f"{path}: invalid {what} at {validation_summary(exc)}") from None
