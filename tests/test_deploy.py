"""The deployment files: docker-compose.yml, Dockerfile and .dockerignore.

No Docker engine runs here, so these tests check what can be checked without
one: the files parse and are shaped for production (pinned images, health
checks, named volumes, start order, a non-root user), every command they run
is a real `consent-ledger` command with real options, and the compose file's
start-up script (init once, then serve) really works, run by `sh` against
PostgreSQL, twice, with the image's health checks polled against it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

with warnings.catch_warnings():
    # Starlette suggests another HTTP library for its TestClient; httpx is what we use.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from api.app import create_app
from cli.main import app
from consent_ledger_client import ConsentLedgerClient
from ledger.service import ConsentLedger
from ledger.service.clients import create_client
from ledger.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
IMAGE_HOME = "/var/lib/consent-ledger"
VENV_BIN = Path(sys.executable).parent
READY_TIMEOUT = 30.0

runner = CliRunner()


# --- reading the files ---------------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|\$(?P<plain>[A-Za-z_][A-Za-z0-9_]*)"
)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Docker Compose variable interpolation: ``$$``, ``${X}``, ``${X:-d}``, ``${X:?msg}``."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("plain")
        current = env.get(name)
        op, arg = match.group("op"), match.group("arg") or ""
        missing = current is None or (op is not None and op.startswith(":") and not current)
        if op in ("-", ":-") and missing:
            return arg
        if op in ("?", ":?") and missing:
            raise KeyError(f"{name}: {arg}")
        return current or ""

    return _VARIABLE.sub(substitute, value)


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return interpolate(raw, {"POSTGRES_PASSWORD": "s3cret", **(env or {})})  # type: ignore[no-any-return]


@dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, name: str) -> list[str]:
        return [argument for instruction, argument in self.instructions if instruction == name]

    def last(self, name: str) -> str:
        found = self.all(name)
        assert found, f"no {name} in the stage FROM {self.base}"
        return found[-1]


def dockerfile() -> list[Stage]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments), continuations joined."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        instruction, _, argument = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append(Stage(base=argument.split()[0]))
        else:
            assert stages, "instruction before FROM"
            stages[-1].instructions.append((instruction.upper(), argument.strip()))
    return stages


def exec_form(argument: str) -> list[str]:
    parsed = json.loads(argument)
    assert isinstance(parsed, list), f"not exec form: {argument}"
    return parsed


def healthcheck_command(argument: str) -> list[str]:
    """The command of a Dockerfile HEALTHCHECK (options stripped), exec form."""
    _, _, command = argument.partition("CMD ")
    return exec_form(command)


def image_command() -> list[str]:
    runtime = dockerfile()[-1]
    return exec_form(runtime.last("ENTRYPOINT")) + exec_form(runtime.last("CMD"))


def api_start_script() -> str:
    """The api service's `sh -c` script, after Compose's interpolation."""
    api = compose()["services"]["api"]
    argv = list(api["entrypoint"]) + list(api["command"])
    assert argv[:2] == ["/bin/sh", "-c"], argv
    assert len(argv) == 3, "the script must be one argument"
    return argv[2]


def script_commands(script: str) -> list[list[str]]:
    """Every `consent-ledger …` command line in a shell script, as argv (without the program)."""
    commands = []
    for line in script.splitlines():
        match = re.search(r"\bconsent-ledger\s+(.*)$", line)
        if match:
            words = shlex.split(match.group(1))
            commands.append(
                ["example.com/consent" if word.startswith("$") else word for word in words]
            )
    return commands


def pinned(image: str) -> bool:
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag != "latest" and bool(re.search(r"\d", tag))


# --- docker-compose.yml -----------------------------------------------------------------------


def test_compose_runs_postgres_and_the_api_from_pinned_images() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "api"}
    for name, service in services.items():
        assert pinned(service["image"]), f"{name}: image {service['image']!r} is not pinned"
        assert service.get("restart") == "unless-stopped"
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["api"]["build"] == "."
    assert "8000:8000" in services["api"]["ports"]
    assert "ports" not in services["postgres"]  # the database is not published


def test_compose_services_have_healthchecks_and_the_api_waits_for_postgres() -> None:
    services = compose()["services"]
    postgres_check = services["postgres"]["healthcheck"]["test"]
    assert postgres_check[0] in ("CMD", "CMD-SHELL")
    assert "pg_isready" in " ".join(postgres_check)
    assert services["api"]["healthcheck"]["test"][0] == "CMD"
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    assert services["api"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}


def test_compose_keeps_state_on_named_volumes() -> None:
    document = compose()
    named = set(document["volumes"])
    assert named == {"postgres-data", "ledger-home"}
    mounts = {
        name: dict(volume.split(":", 1)[::-1] for volume in service["volumes"])
        for name, service in document["services"].items()
    }
    assert mounts["postgres"]["/var/lib/postgresql/data"] == "postgres-data"
    assert mounts["api"][IMAGE_HOME] == "ledger-home"
    assert document["services"]["api"]["environment"]["CONSENT_LEDGER_HOME"] == IMAGE_HOME


def test_compose_database_url_reaches_the_postgres_service() -> None:
    document = compose()
    postgres_env = document["services"]["postgres"]["environment"]
    api_env = document["services"]["api"]["environment"]
    settings = Settings(database_url=api_env["CONSENT_LEDGER_DATABASE_URL"])
    url = make_url(settings.resolved_database_url)
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port) == ("postgres", 5432)
    assert (url.username, url.database) == (
        postgres_env["POSTGRES_USER"],
        postgres_env["POSTGRES_DB"],
    )
    # The password reaches libpq through PGPASSWORD, the same one the server was given.
    assert url.password is None
    assert api_env["PGPASSWORD"] == postgres_env["POSTGRES_PASSWORD"] == "s3cret"


def test_compose_refuses_to_start_without_a_database_password() -> None:
    raw = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(raw, {})


def test_compose_starts_the_api_with_init_once_then_serve() -> None:
    script = api_start_script()
    assert script.startswith("set -e\n")
    assert f"[ ! -f {IMAGE_HOME}/keys/signing.pem ]" in script
    assert script.rstrip().splitlines()[-1] == (
        "exec consent-ledger serve --host 0.0.0.0 --port 8000 --workers 2"
    )
    assert [command[0] for command in script_commands(script)] == ["init", "init", "serve"]


# --- Dockerfile and .dockerignore ------------------------------------------------------------


def test_dockerfile_builds_from_pinned_python_and_runs_as_a_non_root_user() -> None:
    stages = dockerfile()
    assert stages, "no FROM"
    for stage in stages:
        assert pinned(stage.base), stage.base
        assert stage.base.startswith("python:3.11"), stage.base
    runtime = stages[-1]
    user = runtime.last("USER").split(":")[0]
    assert user not in ("root", "0")
    assert f"CONSENT_LEDGER_HOME={IMAGE_HOME}" in " ".join(runtime.all("ENV"))
    assert runtime.last("EXPOSE") == "8000"
    assert IMAGE_HOME in runtime.last("VOLUME")
    assert not any(instruction == "ADD" for s in stages for instruction, _ in s.instructions)


def test_dockerfile_installs_every_package_and_the_console_script() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    build = dockerfile()[0]
    copied = {argument.split()[0] for argument in build.all("COPY")}
    copied |= {word for argument in build.all("COPY") for word in argument.split()[:-1]}
    packages = {
        pattern.rstrip("*")
        for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    missing = packages - copied
    assert not missing, f"the image does not get {missing}"
    assert {"pyproject.toml", project["project"]["readme"]} <= copied
    assert any("pip install ." in run for run in build.all("RUN"))
    entrypoint = image_command()[0]
    assert entrypoint in project["project"]["scripts"]
    assert (VENV_BIN / entrypoint).exists()


def test_dockerfile_healthcheck_and_command() -> None:
    runtime = dockerfile()[-1]
    check = healthcheck_command(runtime.last("HEALTHCHECK"))
    assert check[:2] == ["python", "-c"]
    assert "http://127.0.0.1:8000/healthz" in check[2]
    assert image_command() == [
        "consent-ledger",
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--workers",
        "2",
    ]


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_build() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (".venv/", ".git/", ".consent-ledger/", ".env", "__pycache__/", ".pytest_cache/"):
        assert needed in patterns, needed
    for source in ("ledger", "api", "cli", "pyproject.toml", "README.md"):
        assert not any(pattern.rstrip("/") == source for pattern in patterns), source


# --- the commands are real ---------------------------------------------------------------------


def _all_commands() -> list[list[str]]:
    return [image_command()[1:], *script_commands(api_start_script())]


@pytest.mark.parametrize("argv", _all_commands(), ids=lambda argv: " ".join(argv))
def test_deployment_commands_are_real_cli_commands(argv: list[str]) -> None:
    # Click parses every option before acting on --help, so an option the
    # command does not have fails here with exit code 2.
    result = runner.invoke(app, [*argv, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for option in (word for word in argv if word.startswith("--")):
        assert option in result.output, f"{option} not in `{argv[0]} --help`"


# --- the compose start-up, for real ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Started:
    process: subprocess.Popen[str]
    lines: list[str]
    reader: threading.Thread

    def output(self) -> str:
        return "".join(self.lines)

    def line_after(self, marker: str) -> str:
        lines = self.output().splitlines()
        for position, line in enumerate(lines[:-1]):
            if marker in line:
                return lines[position + 1].strip()
        raise AssertionError(f"no line after {marker!r} in:\n{self.output()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.reader.join(timeout=5)


def _start(script: str, env: dict[str, str]) -> Started:
    process = subprocess.Popen(
        ["/bin/sh", "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: stop() ends it and its workers
    )
    lines: list[str] = []
    assert process.stdout is not None
    stdout = process.stdout
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")), daemon=True)
    reader.start()
    return Started(process, lines, reader)


def _wait_until_ready(started: Started, base: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if started.process.poll() is not None:
            raise AssertionError(
                f"exited with {started.process.returncode} before ready:\n{started.output()}"
            )
        try:
            health = httpx.get(base + "/healthz", timeout=1)
            ready = httpx.get(base + "/readyz", timeout=1)
            if health.status_code == ready.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready within {READY_TIMEOUT} s:\n{started.output()}")


def _run_healthcheck(command: list[str], port: int) -> int:
    assert command[0] == "python"  # the image's venv python; here, the test's
    code = command[2].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode


@pytest.fixture
def empty_postgres(database_url: str) -> str:
    """A PostgreSQL database as the compose `postgres` service starts: no schema at all."""
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return database_url


@pytest.fixture
def started() -> Iterator[list[Started]]:
    processes: list[Started] = []
    yield processes
    for process in processes:
        process.stop()


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_compose_start_script_initialises_once_and_serves_on_postgres(
    empty_postgres: str, tmp_path: Path, started: list[Started]
) -> None:
    home, port = tmp_path / "home", _free_port()
    base = f"http://127.0.0.1:{port}"
    origin = "deploy-test.example/ledger"
    script = api_start_script()
    for fixed in (IMAGE_HOME, "--host 0.0.0.0", "--port 8000"):
        assert fixed in script
    script = (
        script.replace(IMAGE_HOME, str(home))
        .replace("--host 0.0.0.0", "--host 127.0.0.1")
        .replace("--port 8000", f"--port {port}")
    )
    api_env = compose({"CONSENT_LEDGER_ORIGIN": origin})["services"]["api"]["environment"]
    env = {name: value for name, value in os.environ.items() if not name.startswith("CONSENT_")}
    env |= api_env | {
        "CONSENT_LEDGER_HOME": str(home),
        "CONSENT_LEDGER_DATABASE_URL": empty_postgres,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    health = [
        healthcheck_command(dockerfile()[-1].last("HEALTHCHECK")),
        compose()["services"]["api"]["healthcheck"]["test"][1:],
    ]

    # First start: init (the key file does not exist yet), then serve.
    first = _start(script, env)
    started.append(first)
    _wait_until_ready(first, base)
    admin_key = first.line_after("admin API key")
    verifier_key = first.line_after("verifier key")
    assert verifier_key.startswith(origin + "+")
    assert (home / "keys" / "signing.pem").is_file()
    assert home.stat().st_mode & 0o077 == 0

    checkpoint = httpx.get(
        base + "/v1/ledger/checkpoint", headers={"Authorization": f"Bearer {admin_key}"}
    )
    assert checkpoint.status_code == 200, checkpoint.text
    assert checkpoint.text.startswith(origin + "\n")
    assert httpx.get(base + "/v1/ledger/checkpoint").status_code == 401

    trust = tmp_path / "platform.checkpoint"
    with ConsentLedgerClient(base, admin_key, verifier_key, trust_store=trust) as client:
        client.register("user-1", "US")
        receipt = client.record("user-1", [{"category": "content.public", "decision": "granted"}])
        answer = client.check("user-1", "content.public", at_least_as_fresh=receipt.token)
        assert (answer["eligible"], answer["reason"]) == (True, "consent")
    for command in health:
        assert _run_healthcheck(command, port) == 0, command

    first.stop()
    assert first.process.returncode is not None
    for command in health:
        assert _run_healthcheck(command, port) != 0, "healthy with the server stopped"

    # Restart (a container restart): the key exists, so no second init; the log is kept.
    second = _start(script, env)
    started.append(second)
    _wait_until_ready(second, base)
    assert "admin API key" not in second.output()
    assert "ledger initialised" not in second.output()
    with ConsentLedgerClient(base, admin_key, verifier_key, trust_store=trust) as client:
        assert client.trusted_checkpoint is not None
        assert client.trusted_checkpoint.size == receipt.token
        later = client.record("user-1", [{"category": "profile", "decision": "denied"}])
        assert later.token == receipt.token + 1  # proven consistent with the first run's log
    for command in health:
        assert _run_healthcheck(command, port) == 0, command
    second.stop()

    # The platform's trust store is an external checkpoint `verify` accepts.
    verified = subprocess.run(
        [str(VENV_BIN / "consent-ledger"), "verify", "--checkpoint", str(trust)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"consistent with saved checkpoint of size {later.token}" in verified.stdout


# --- a read-only API instance on a replica (docs/PRODUCTION.md) ----------------------------------


@pytest.fixture
def read_only_ledger(database_url: str, tmp_path: Path) -> Iterator[tuple[ConsentLedger, str]]:
    """A ledger whose database then refuses writes, as a PostgreSQL hot standby does."""
    settings = Settings(home=tmp_path / "home", database_url=database_url)
    primary, _ = ConsentLedger.initialize(settings, origin="replica.example/ledger", actor="t")
    _, key = create_client(primary.engine, "platform", ["check", "record", "read", "audit"])
    primary.register_subject("user-1", jurisdiction="US", actor="t")
    primary.close()
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        name = make_url(database_url).database
        connection.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'))
    engine.dispose()
    replica = ConsentLedger(settings)
    yield replica, key
    replica.close()


def _replica_app(replica: ConsentLedger) -> TestClient:
    return TestClient(create_app(ledger=replica), raise_server_exceptions=False)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_read_only_instance_serves_checks_and_readiness(
    read_only_ledger: tuple[ConsentLedger, str],
) -> None:
    replica, key = read_only_ledger
    replica.upgrade()  # what `serve` runs first: a no-op on an up-to-date standby
    http = _replica_app(replica)
    auth = {"Authorization": f"Bearer {key}"}
    assert http.get("/readyz").status_code == 200
    answer = http.post(
        "/v1/eligibility/check", json={"subject_id": "user-1", "category": "profile"}, headers=auth
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["reason"] == "default-allow"
    behind = http.post(
        "/v1/eligibility/check",
        json={"subject_id": "user-1", "category": "profile", "at_least_as_fresh": 10},
        headers=auth,
    )
    assert behind.status_code == 503
    assert behind.headers["Retry-After"] == "1"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_write_to_a_read_only_instance_is_a_clear_503(
    read_only_ledger: tuple[ConsentLedger, str],
) -> None:
    replica, key = read_only_ledger
    http = _replica_app(replica)
    response = http.put(
        "/v1/subjects/user-2",
        json={"jurisdiction": "US"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 503, response.text
    assert "read-only" in response.json()["detail"]
