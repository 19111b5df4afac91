"""Both command lines: defaults and an example in every --help, -v/-q after the subcommand,
output piped into a reader that stops early (``--json | head``) ends quietly."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from coordinator.cli.main import build_parser as coordinator_parser
from optima_common.cli import leaf_commands
from site_agent.cli import build_parser as site_parser
from tests.conftest import REPO

PROGRAMS = {"site-agent": (site_parser, "site_agent"), "coordinator": (coordinator_parser, "coordinator.cli.main")}


@pytest.mark.parametrize("prog", sorted(PROGRAMS))
def test_every_command_has_an_example_and_shows_defaults(prog):
    build, _ = PROGRAMS[prog]
    leaves = leaf_commands(build())
    assert len(leaves) > 10
    for path, p in leaves:
        assert p.epilog and p.epilog.startswith("example:") and f"{prog} {path.split()[0]}" in p.epilog, path
        text = p.format_help()
        assert "-v, --verbose" in text and "-q, --quiet" in text, path
        assert "(default: None)" not in text, path
        flat = " ".join(text.split())
        for a in p._actions:
            if a.option_strings and not a.required and a.default not in (None, False, argparse.SUPPRESS) \
                    and a.dest != "help":
                assert f"(default: {a.default})" in flat, (path, a.dest)
    if prog == "coordinator":
        assert "(default: 3000)" in " ".join(dict(leaves)["demo"].format_help().split())


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO,
                          check=False)


def test_verbose_and_quiet_after_the_subcommand(tmp_path):
    missing = str(tmp_path / "nowhere.duckdb")
    for args in (["cdm", "check", "--cdm", missing, "-v"], ["cdm", "check", "--cdm", missing, "-q"],
                 ["-v", "cdm", "check", "--cdm", missing]):
        proc = run("site_agent", *args)
        assert proc.returncode not in (0, 2) and "unrecognized arguments" not in proc.stderr, args
        assert "no DuckDB file" in proc.stderr
    proc = run("coordinator.cli.main", "view", "--store", str(tmp_path / "none.sqlite3"), "-v")
    assert proc.returncode != 0 and proc.stderr.count("\n") == 1 and "not found" in proc.stderr
    assert not (tmp_path / "none.sqlite3").exists()  # nothing half-written


@pytest.mark.parametrize("module,args", [("coordinator.cli.main", ["sites", "list", "--json"]),
                                         ("site_agent", ["--help"])])
def test_output_into_a_closed_pipe_ends_quietly(tmp_path, module, args):
    if module.startswith("coordinator"):
        args = [*args, "--trust", str(tmp_path)]
    p = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         cwd=REPO)
    p.stdout.close()  # the reader is gone before the program writes (as `| head` after its lines)
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0 and "BrokenPipeError" not in err and "Traceback" not in err, err
