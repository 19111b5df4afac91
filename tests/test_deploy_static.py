"""deploy/ checked without a container engine: the Compose file against the Compose
specification's JSON schema, the systemd units with ``systemd-analyze verify``, and every
command line in them against the real programs' options. The same processes run for real in
tests/e2e (LocalNetwork starts them with the same flags)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.conftest import REPO

DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def compose_schema(tmp_path_factory) -> dict:
    """The Compose specification schema as shipped in docker-compose 1.29.2's wheel (PyPI)."""
    folder = tmp_path_factory.mktemp("compose-schema")
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder),
                           "docker-compose==1.29.2"], capture_output=True, text=True)
    assert proc.returncode == 0, f"cannot fetch docker-compose from PyPI for its schema: {proc.stderr[-300:]}"
    wheel = next(folder.glob("docker_compose-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        return json.loads(z.read("compose/config/compose_spec.json"))


def options_of(program: str) -> set[str]:
    out = subprocess.run([str(BIN / program), "--help"], capture_output=True, text=True).stdout
    return set(re.findall(r"(--[a-z][a-z0-9-]+)", out))


def assert_flags_known(argv: list[str]) -> None:
    program = Path(argv[0]).name
    used = {a for a in argv[1:] if a.startswith("--")}
    unknown = used - options_of(program)
    assert not unknown, f"{program} does not accept {sorted(unknown)}"


def test_compose_file_follows_the_compose_specification(compose, compose_schema):
    jsonschema.validate(compose, compose_schema)  # raises with the offending path


def test_compose_commands_and_files_exist(compose):
    services = compose["services"]
    for name in ("superlink", "site-a", "site-b"):
        assert_flags_known(services[name]["command"])
    # the SuperLink's port (Fleet + Control in Flower 1.42) is never published; only the proxy is
    assert "ports" not in services["superlink"] and services["fleet-proxy"]["ports"] == ["9443:9443"]
    from coordinator.cli.main import build_parser

    args = build_parser().parse_args(services["coordinator"]["command"][1:])
    assert args.study_command == "send" and (REPO / args.spec).is_file()
    for service in services.values():
        for volume in service.get("volumes", []):
            src = volume.split(":")[0]
            if src.startswith("./nginx"):
                assert (DEPLOY / src).is_file(), src


def test_fleet_proxy_exposes_only_the_fleet_api():
    from flwr.superlink.routers.fleet.router import router

    conf = (DEPLOY / "nginx" / "superlink-fleet.conf").read_text()
    proxied = re.findall(r"location\s+(\S+)\s*\{[^}]*proxy_pass", conf)
    assert proxied == [f"{router.prefix}/"]
    assert re.search(r"location\s+/\s*\{\s*return 403;", conf)
    assert "proxy_ssl_verify on;" in conf


@pytest.mark.parametrize("unit", sorted(p.name for p in (DEPLOY / "systemd").glob("*.service")))
def test_systemd_unit_verifies(unit, tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (Debian package systemd; scripts/test.sh installs it)"
    text = (DEPLOY / "systemd" / unit).read_text().replace("/opt/optima/venv/bin/", f"{BIN}/")
    (tmp_path / unit).write_text(text)
    proc = subprocess.run([analyze, "verify", str(tmp_path / unit)], capture_output=True, text=True)
    problems = [ln for ln in (proc.stdout + proc.stderr).splitlines() if unit in ln]
    assert proc.returncode == 0 and not problems, problems
    exec_start = next(ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith("ExecStart="))
    argv = shlex.split(exec_start)
    assert_flags_known(argv)
    if "--node-config" in argv:  # the value reaches Flower as TOML: site-config="..."
        value = argv[argv.index("--node-config") + 1]
        assert re.fullmatch(r'site-config="[^"]+"', value), value


def test_flower_telemetry_is_off_everywhere_we_start_flower():
    """Flower posts usage events (with the host's platform details) to its servers by default; no
    process of a site or the coordinator may: every unit, the image, and the processes
    LocalNetwork and `flwr run` start (checked as Flower itself reads the setting)."""
    from coordinator.flower.network import flower_env

    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        assert "Environment=FLWR_TELEMETRY_ENABLED=0" in unit.read_text().splitlines(), unit.name
    env_lines = [ln for ln in (DEPLOY / "Dockerfile").read_text().splitlines() if ln.startswith("ENV ")]
    assert any("FLWR_TELEMETRY_ENABLED=0" in ln.split() for ln in env_lines)
    env = flower_env({**os.environ, "FLWR_TELEMETRY_ENABLED": "1"})  # an operator's own setting loses
    seen = subprocess.run([sys.executable, "-c", "from flwr.supercore import telemetry as t; "
                           "print(t.FLWR_TELEMETRY_ENABLED)"], env=env, capture_output=True, text=True)
    assert seen.stdout.strip() == "0", seen.stderr[-300:]
