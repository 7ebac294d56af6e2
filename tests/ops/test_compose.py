"""The compose stack: docker-compose.yml, Dockerfile, .dockerignore, ops/prometheus-compose.yml.

No Docker engine runs where this project is built and tested, so the stack is never started
here. These tests check what can be checked without one: the compose file against the Compose
Specification JSON Schema (vendored by check-jsonschema as ``vendor.compose-spec``), and the
wiring between the files that would otherwise only break once someone runs the stack.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import tomllib
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
METRICS_PORT = 9108


# -- helpers -----------------------------------------------------------------


def _compose_schema() -> dict[str, Any]:
    """The Compose Specification schema that check-jsonschema ships (no network).

    The file is located without importing ``check_jsonschema``: its ``__init__`` imports its
    CLI, and check-jsonschema 0.38.1 fails at import with click < 8.4 ("'ParamType' is not
    subscriptable", python-jsonschema/check-jsonschema#719), which is what ``.venv`` has.
    """
    spec = importlib.util.find_spec("check_jsonschema")
    assert spec is not None and spec.submodule_search_locations, "check-jsonschema missing"
    package = Path(next(iter(spec.submodule_search_locations)))
    path = package / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema: dict[str, Any] = json.loads(path.read_text())
    assert schema.get("title") == "Compose Specification", path
    return schema


def _schema_errors(compose_file: Path) -> list[str]:
    """Validate *compose_file* against the Compose Specification; return the errors."""
    schema = _compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    document = yaml.safe_load(compose_file.read_text())
    errors = validator_class(schema).iter_errors(document)
    return [f"{e.json_path}: {e.message}" for e in sorted(errors, key=lambda e: e.json_path)]


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(type, source, target) of each volume of *service*, short and long syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        else:
            kind, source, target = volume["type"], volume.get("source", ""), volume["target"]
        mounts.append((kind, source, target))
    return mounts


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _option(args: list[str], name: str) -> str:
    for i, arg in enumerate(args):
        if arg == name:
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} not in {args}")


def _listeners(value: str) -> dict[str, tuple[str, int]]:
    """Parse Kafka's ``NAME://host:port,...`` into {name: (host, port)}."""
    parsed = {}
    for item in value.split(","):
        name, address = item.split("://")
        host, port = address.rsplit(":", 1)
        parsed[name] = (host, int(port))
    return parsed


def _dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
    return instructions


def _glob(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Match path segments against pattern segments: ``*`` stays in a segment, ``**`` spans."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_glob(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], pattern[0]) and _glob(parts[1:], pattern[1:])


def _dockerignored(path: str) -> bool:
    """Whether *path* (relative, posix) is excluded by .dockerignore (no ``!`` rules used).

    As Docker does: a pattern matches from the context root, and excluding a folder
    excludes everything in it.
    """
    patterns = [
        PurePosixPath(p.strip().lstrip("/")).parts
        for p in DOCKERIGNORE.read_text().splitlines()
        if p.strip() and not p.strip().startswith("#")
    ]
    assert not any(p[0].startswith("!") for p in patterns), "update _dockerignored for ! rules"
    parts = PurePosixPath(path).parts
    return any(_glob(parts[:i], p) for p in patterns for i in range(1, len(parts) + 1))


# -- the schema --------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    assert _schema_errors(COMPOSE) == []


@pytest.mark.parametrize(
    "broken",
    [
        {"services": {"kafka": {"image": 5, "ports": "x"}}},
        "unknown-top-level-key",
        "misspelt-service-key",
    ],
    ids=["wrong-types", "unknown-top-level-key", "misspelt-service-key"],
)
def test_schema_validation_catches_a_broken_file(broken: Any, tmp_path: Path) -> None:
    if broken == "unknown-top-level-key":
        broken = {**_compose(), "servics": {}}
    elif broken == "misspelt-service-key":
        broken = _compose()
        broken["services"]["worker"]["comand"] = broken["services"]["worker"].pop("command")
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    assert _schema_errors(path) != []


# -- files and services ------------------------------------------------------


def test_every_host_path_a_service_uses_exists() -> None:
    declared_volumes = set(_compose().get("volumes") or {})
    for name, service in _services().items():
        for kind, source, target in _mounts(service):
            if kind == "bind":
                host = (ROOT / source).resolve()
                assert host.exists(), (name, source)
                if PurePosixPath(target).suffix:  # a file mount: a missing file becomes a dir
                    assert host.is_file(), (name, source)
            else:
                assert source in declared_volumes, (name, source)
        build = service.get("build")
        if build is not None:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            assert context.is_dir(), name
        for env_file in service.get("env_file", []):
            assert (ROOT / env_file).is_file(), (name, env_file)


def test_no_service_uses_host_networking() -> None:
    for name, service in _services().items():
        assert service.get("network_mode") != "host", name


def test_worker_builds_from_the_root_dockerfile_and_can_scale() -> None:
    worker = _services()["worker"]
    build = worker["build"]
    assert (ROOT / build["context"]).resolve() == ROOT
    assert (ROOT / build["context"] / build.get("dockerfile", "Dockerfile")).resolve() == (
        DOCKERFILE
    )
    # `docker compose up --scale worker=3`: a fixed name or host port would collide.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert str(METRICS_PORT) in [str(port) for port in worker.get("expose", [])]
    assert "network_mode" not in worker


def test_worker_runs_against_the_internal_kafka_listener() -> None:
    services = _services()
    worker, kafka = services["worker"], services["kafka"]
    args = _command(worker)
    assert args[0] == "run"
    assert _option(args, "--metrics-port") == str(METRICS_PORT)
    broker = _option(args, "--broker")
    assert _environment(worker)["KAFKA_BOOTSTRAP_SERVERS"] == broker

    kafka_env = _environment(kafka)
    advertised = _listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    bound = _listeners(kafka_env["KAFKA_LISTENERS"])
    internal = [name for name, (host, _) in advertised.items() if host == "kafka"]
    assert len(internal) == 1, advertised
    host, port = advertised[internal[0]]
    assert broker == f"{host}:{port}"
    assert bound[internal[0]][1] == port
    assert kafka.get("hostname", "kafka") == "kafka"
    # The host listener: advertised as localhost:9092 and published on the same port.
    host_side = [name for name, (h, _) in advertised.items() if h == "localhost"]
    assert len(host_side) == 1, advertised
    host_port = advertised[host_side[0]][1]
    assert f"{host_port}:{bound[host_side[0]][1]}" in kafka["ports"]
    assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"


def _run_envvars() -> set[str]:
    from privacy_pipeline.cli.live import run

    return {p.envvar for p in run.params if isinstance(p.envvar, str)}


@pytest.mark.parametrize(
    "name",
    [
        "KAFKA_BOOTSTRAP_SERVERS",
        "PRIVACY_PIPELINE_METRICS_HOST",
        "PRIVACY_PIPELINE_SECRETS",
    ],
)
def test_worker_environment_is_read_by_run(name: str) -> None:
    assert name in _environment(_services()["worker"])
    assert name in _run_envvars()


def test_grafana_keeps_the_admin_password_requirement_and_reaches_prometheus() -> None:
    services = _services()
    grafana, prometheus = services["grafana"], services["prometheus"]
    password = _environment(grafana)["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", password), password

    targets = {target: ROOT / source for _, source, target in _mounts(grafana)}
    sources = targets["/etc/grafana/provisioning/datasources"]
    urls = [
        ds["url"]
        for f in sorted(sources.glob("*.yml"))
        for ds in yaml.safe_load(f.read_text())["datasources"]
        if ds["type"] == "prometheus"
    ]
    assert urls, sources
    listen = _option(_command(prometheus), "--web.listen-address")
    for url in map(urlparse, urls):
        assert url.port == int(listen.rsplit(":", 1)[1])
        if grafana.get("network_mode") == "service:prometheus":
            # Same network namespace: localhost is Prometheus, and Prometheus publishes
            # Grafana's port.
            assert url.hostname in ("localhost", "127.0.0.1")
            assert "ports" not in grafana
            http_port = _environment(grafana).get("GF_SERVER_HTTP_PORT", "3000")
            assert f"{http_port}:{http_port}" in prometheus["ports"]
        else:
            assert url.hostname == "prometheus"


# -- Prometheus --------------------------------------------------------------


def _prometheus_config() -> tuple[dict[str, Any], Path, PurePosixPath]:
    """The scrape config Prometheus loads in compose: (parsed, host file, container path)."""
    prometheus = _services()["prometheus"]
    target = PurePosixPath(_option(_command(prometheus), "--config.file"))
    mounts = {PurePosixPath(t): ROOT / s for kind, s, t in _mounts(prometheus) if kind == "bind"}
    host_file = mounts[target]
    config: dict[str, Any] = yaml.safe_load(host_file.read_text())
    return config, host_file, target


def test_prometheus_in_compose_scrapes_every_worker_replica() -> None:
    config, host_file, _ = _prometheus_config()
    assert host_file == ROOT / "ops" / "prometheus-compose.yml"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    # The alerts and the dashboard select job="privacy-pipeline".
    assert 'job="privacy-pipeline"' in (ROOT / "ops" / "alerts.yml").read_text()
    job = jobs["privacy-pipeline"]
    assert "static_configs" not in job
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and "worker" in _services()
    assert sd["type"] == "A"
    assert sd["port"] == METRICS_PORT


def test_prometheus_rule_files_are_mounted_next_to_the_config() -> None:
    config, host_file, target = _prometheus_config()
    mounted = {
        PurePosixPath(t): s for kind, s, t in _mounts(_services()["prometheus"]) if kind == "bind"
    }
    assert config["rule_files"]
    for rule_file in config["rule_files"]:
        assert (host_file.parent / rule_file).is_file(), rule_file  # for promtool, in ops/
        in_container = target.parent / rule_file
        assert in_container in mounted, rule_file
        assert (ROOT / mounted[in_container]).resolve() == (host_file.parent / rule_file)


def test_host_prometheus_config_still_targets_a_worker_on_the_host() -> None:
    config = yaml.safe_load((ROOT / "ops" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for sc in jobs["privacy-pipeline"]["static_configs"] for t in sc["targets"]]
    assert f"localhost:{METRICS_PORT}" in targets


def test_compose_prometheus_config_passes_promtool(promtool: str) -> None:
    done = subprocess.run(
        [promtool, "check", "config", "prometheus-compose.yml"],
        cwd=ROOT / "ops",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- Dockerfile and .dockerignore --------------------------------------------


def test_dockerfile_installs_the_package_non_editable_as_non_root() -> None:
    instructions = _dockerfile()
    keywords = [keyword for keyword, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert keywords.count("FROM") == 1
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    installs = [r for r in runs if re.search(r"\bpip install\b", r)]
    assert len(installs) == 1, runs
    assert re.search(r"\bpip install \.(\s|$)", installs[0]), installs[0]
    assert not re.search(r"(^|\s)(-e|--editable)(\s|$)", installs[0]), installs[0]
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert keywords.index("USER") > keywords.index("RUN")
    assert str(METRICS_PORT) in [
        a for keyword, args in instructions if keyword == "EXPOSE" for a in args.split()
    ]
    assert json.loads(dict(instructions)["ENTRYPOINT"]) == ["privacy-pipeline"]
    assert json.loads(dict(instructions)["CMD"]) == ["run"]


def test_dockerfile_copies_everything_the_package_build_needs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", pyproject["project"]["readme"]}
    needed |= set(pyproject["tool"]["setuptools"]["package-dir"].values())
    copied = set()
    for keyword, args in _dockerfile():
        if keyword == "COPY":
            *sources, _ = args.split()
            copied |= {s.rstrip("/") for s in sources if not s.startswith("--")}
    assert needed <= copied, sorted(needed - copied)
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not _dockerignored(source), source


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    for path in (".venv", "build", "dist", ".git", "tests", "bench", ".mypy_cache"):
        assert _dockerignored(path), path
    assert _dockerignored("streams/__pycache__/worker.cpython-311.pyc")
    assert _dockerignored("privacy_pipeline.egg-info/PKG-INFO")
    for kept in ("streams/worker.py", "README.md", "pyproject.toml", "Dockerfile.d/x"):
        assert not _dockerignored(kept), kept
