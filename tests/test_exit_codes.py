"""One table of errors: distinct exit codes, built-in base classes, and a doc that matches."""

from __future__ import annotations

import inspect
import re

import pytest

from optima_common import errors
from optima_common.errors import ExitCode, OptimaError
from tests.conftest import REPO

ERROR_CLASSES = [c for _, c in inspect.getmembers(errors, inspect.isclass)
                 if issubclass(c, OptimaError) and c is not OptimaError]


def test_every_error_has_its_own_exit_code():
    codes = {}
    for cls in ERROR_CLASSES:
        assert isinstance(cls.exit_code, ExitCode), cls
        assert cls.exit_code not in codes, f"{cls.__name__} and {codes.get(cls.exit_code)} share {cls.exit_code}"
        codes[cls.exit_code] = cls.__name__
    assert len(codes) == len(ExitCode) - 1  # every code but UNEXPECTED belongs to one error


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_subclasses_a_builtin(cls):
    builtin = [b for b in cls.__mro__ if b.__module__ == "builtins" and b not in (Exception, BaseException, object)]
    assert builtin, f"{cls.__name__} subclasses no built-in error"


def test_errors_are_defined_only_in_the_table():
    """No module defines its own exit code outside optima_common.errors."""
    bad = [f"{p.relative_to(REPO)}:{i}" for pkg in ("optima_common", "site_agent", "coordinator")
           for p in sorted((REPO / pkg).rglob("*.py")) if p.name != "errors.py"
           for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
           if re.match(r"\s+exit_code\s*=", line)]
    assert not bad, bad


def test_exit_codes_doc_lists_every_code():
    text = (REPO / "docs" / "exit-codes.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\|\s*(\d+)\s*\|\s*`([A-Z_]+)`\s*\|", text, flags=re.MULTILINE))
    assert {int(k): v for k, v in rows.items()} == {int(c): c.name for c in ExitCode}


@pytest.mark.parametrize("code", [ExitCode.STUDY_INCOMPLETE, ExitCode.NETWORK, ExitCode.STORE, ExitCode.COORDINATOR])
def test_a_failed_server_run_keeps_its_exit_code(code):
    from coordinator.cli.common import outcome_error

    err = outcome_error({"ok": False, "error": "only 1 of 3 sites answered", "exit_code": int(code)})
    assert err.exit_code == code and str(err) == "only 1 of 3 sites answered"
    assert outcome_error({"ok": False, "exit_code": 999}).exit_code == ExitCode.COORDINATOR
