"""The deployment recipes in deploy/ are well formed and name only settings that exist."""

from __future__ import annotations

import configparser
import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypercorn.config import Config as HypercornConfig

from npc_server import asgi
from npc_server.settings import AuthSection, LimitsSection, ServerSection

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
GUIDE = REPO / "docs" / "deploy.md"
FILES = sorted(p for p in DEPLOY.rglob("*") if p.is_file())
SECTIONS: dict[str, type] = {"server": ServerSection, "auth": AuthSection, "limits": LimitsSection}
# Flags of other tools the recipes use (docker HEALTHCHECK, useradd, systemctl).
OTHER_TOOLS_FLAGS = {"--interval", "--timeout", "--start-period", "--retries"}
OTHER_TOOLS_FLAGS |= {"--create-home", "--uid", "--shell", "--now", "--no-deps"}
DOCKER_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def tool(name: str) -> str | None:
    """A system tool's path; Debian puts nginx and haproxy in /usr/sbin, off some PATHs."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


NGINX = tool("nginx")
HAPROXY = tool("haproxy")


def texts() -> dict[str, str]:
    """Every recipe file and the guide, by name."""
    named = {str(p.relative_to(REPO)): p.read_text(encoding="utf-8") for p in FILES}
    return {**named, "docs/deploy.md": GUIDE.read_text(encoding="utf-8")}


def help_text(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def known_env_names() -> set[str]:
    """NPC_SERVER_* names the server reads: one per section key, plus those in its source."""
    names = {
        f"NPC_SERVER_{section.upper()}_{f.name.upper()}"
        for section, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)
    }
    names |= {"NPC_SERVER_HOST", "NPC_SERVER_PORT"}  # short for the server section (config.py)
    for source in (REPO / "npc_server").rglob("*.py"):
        names |= set(re.findall(r"\"(NPC_SERVER_[A-Z0-9_]+)\"", source.read_text()))
    return names


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    logical: list[str] = []
    current = ""
    for line in lines:
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return [(line.split(None, 1)[0], line.split(None, 1)[1]) for line in logical]


def test_every_recipe_file_is_reproduced_in_the_guide() -> None:
    """docs/deploy.md shows each file of deploy/ exactly as it is."""
    guide = GUIDE.read_text(encoding="utf-8")
    blocks = dict(
        (name, body)
        for name, body in re.findall(r"^```\w+ (deploy/\S+)\n(.*?)^```$", guide, re.M | re.S)
    )
    assert len(FILES) >= 5
    for path in FILES:
        name = str(path.relative_to(REPO))
        assert blocks.get(name) == path.read_text(), f"docs/deploy.md does not show {name} as is"


def test_dockerfile_is_slim_non_root_and_health_checked() -> None:
    """Known instructions; a slim Python base, a non-root USER before CMD, HEALTHCHECK on /healthz."""
    instructions = dockerfile_instructions()
    names = [name for name, _ in instructions]
    assert set(names) <= DOCKER_INSTRUCTIONS, set(names) - DOCKER_INSTRUCTIONS
    assert names[0] == "FROM"
    assert re.fullmatch(r"python:3\.1[1-9]-slim\S*", instructions[0][1])
    user = [args for name, args in instructions if name == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert names.index("USER") < names.index("CMD")
    health = [args for name, args in instructions if name == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0]
    command = json.loads(dict(instructions)["CMD"])
    assert command[:2] == ["npc-server", "serve"]
    serve_help = help_text([sys.executable, "-m", "npc_server", "--help"])
    assert all(flag in serve_help for flag in command[2:] if flag.startswith("--"))


def test_systemd_unit_is_well_formed() -> None:
    """The unit parses as INI, runs `npc-server serve` unprivileged and outwaits the drain."""
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read(DEPLOY / "npc-server.service", encoding="utf-8")
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    exec_start = service["ExecStart"].split()
    assert exec_start[0].endswith("/npc-server") and exec_start[1] == "serve"
    assert service["User"] not in ("root", "0")
    assert service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) > ServerSection().graceful_timeout + 5
    for assignment in service["Environment"].split():
        assert assignment.split("=", 1)[0] in known_env_names(), assignment


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (scripts/test.sh installs it)")
def test_nginx_snippet_passes_nginx_t(tmp_path: Path) -> None:
    """`nginx -t` accepts the snippet included in a minimal http block."""
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n    include {DEPLOY / 'nginx' / 'npc-server.conf'};\n}}\n"
    )
    done = subprocess.run(
        [str(NGINX), "-t", "-c", str(conf), "-p", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


@pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed (scripts/test.sh installs it)"
)
def test_haproxy_config_passes_haproxy_c() -> None:
    """`haproxy -c` accepts the configuration without a warning."""
    done = subprocess.run(
        [str(HAPROXY), "-c", "-f", str(DEPLOY / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "WARNING" not in output and "ALERT" not in output, output


def test_hypercorn_config_sets_only_hypercorn_settings() -> None:
    """deploy/hypercorn.toml loads with Hypercorn and each of its keys is a Hypercorn setting."""
    path = DEPLOY / "hypercorn.toml"
    config = HypercornConfig.from_toml(str(path))
    keys = re.findall(r"^(\w+)\s*=", path.read_text(), re.M)
    assert all(hasattr(HypercornConfig(), key) for key in keys), keys
    assert config.websocket_max_message_size == LimitsSection().frame_bytes
    assert config.workers == 1


def test_recipes_name_only_settings_that_exist() -> None:
    """Every `[section] key`, NPC_SERVER_* name and --flag in the recipes and guide exists."""
    known_flags = OTHER_TOOLS_FLAGS | set(
        re.findall(r"--[a-z][\w-]*", help_text([sys.executable, "-m", "npc_server", "--help"]))
    )
    known_flags |= set(
        re.findall(r"--[a-z][\w-]*", help_text([sys.executable, "-m", "npc_server", "token", "-h"]))
    )
    hypercorn = Path(sys.executable).with_name("hypercorn")
    known_flags |= set(re.findall(r"--[a-z][\w-]*", help_text([str(hypercorn), "--help"])))
    env_names = known_env_names()
    for name, text in texts().items():
        for section, key in re.findall(r"\[(server|auth|limits)\] ([a-z_]+)", text):
            fields = {f.name for f in dataclasses.fields(SECTIONS[section])}
            assert key in fields, f"{name}: [{section}] {key} is not a setting"
        for env in re.findall(r"NPC_SERVER_[A-Z0-9_]*[A-Z0-9]", text):
            assert env in env_names, f"{name}: {env} is not read by npc-server"
        for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", text):
            assert flag in known_flags, f"{name}: {flag} is not a flag of npc-server or Hypercorn"


def test_guide_lists_every_setting_plain_hypercorn_cannot_apply() -> None:
    """Each setting the ASGI entry point logs as not applied has a row in docs/deploy.md."""
    guide = GUIDE.read_text(encoding="utf-8")
    for setting, _ in asgi.NOT_APPLIED:
        for key in re.findall(r"[a-z]+_[a-z_]+|backlog|host|port", setting):
            assert f"`{key}`" in guide or f"] {key}`" in guide, f"{key} is not in docs/deploy.md"
