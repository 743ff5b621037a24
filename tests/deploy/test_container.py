"""The Dockerfile's promises (stages, non-root, health check, CPU pin) and a compose file docker accepts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.deploy.promql import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text())


def _instructions(name: str) -> list[str]:
    """The arguments of every ``name`` instruction (continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.upper().startswith(f"{name} ")]


def test_dockerfile_is_multi_stage_with_a_switchable_base() -> None:
    stages = _instructions("FROM")
    assert len(stages) >= 3
    assert stages[0].startswith("${BASE_IMAGE}")
    assert DOCKERFILE.index("ARG BASE_IMAGE=") < DOCKERFILE.index("FROM ")
    assert any("--from=build" in line for line in _instructions("COPY"))


def test_runtime_runs_as_a_non_root_user_with_a_health_check() -> None:
    users = _instructions("USER")
    assert users and users[-1] not in ("root", "0")
    runtime = DOCKERFILE[DOCKERFILE.rindex("\nFROM ") :]
    assert "HEALTHCHECK" in runtime and "/healthz" in runtime
    assert _instructions("ENTRYPOINT") == ['["flatmtl"]']
    assert _instructions("CMD")[-1] == '["serve"]'


def test_cpu_variant_pins_torch_through_the_constraints() -> None:
    assert "ARG VARIANT=cpu" in DOCKERFILE
    cpu_case = re.search(r"cpu\)\s*constraints=\"([^\"]*)\"", DOCKERFILE)
    assert cpu_case is not None and "constraints-cpu.txt" in cpu_case.group(1)
    assert "torch==" in (ROOT / "constraints-cpu.txt").read_text()


def test_compose_runs_the_whole_stack_from_one_image() -> None:
    services = COMPOSE["services"]
    assert set(services) == {"postgres", "api", "worker", "prometheus", "grafana"}
    assert services["api"]["command"] == ["serve"] and services["worker"]["command"] == ["worker"]
    assert services["api"]["image"] == services["worker"]["image"]
    assert any(volume.endswith(":/var/lib/postgresql/data") for volume in services["postgres"]["volumes"])
    for name in ("api", "worker"):
        environment = services[name]["environment"]
        assert environment["FLATMTL_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert "@postgres:5432/" in environment["FLATMTL_DATABASE_URL"]
        assert all(key.startswith("FLATMTL_") for key in environment)


def test_compose_mounts_exist_and_prometheus_scrapes_the_api() -> None:
    for service in COMPOSE["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{source} is mounted but missing"
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = [
        target for job in prometheus["scrape_configs"] for sc in job["static_configs"] for target in sc["targets"]
    ]
    assert targets == ["api:8000"]
    assert "8000" in COMPOSE["services"]["api"]["ports"][0]


def _compose_command() -> list[str]:
    """``docker compose`` (v2 plugin) or Debian's ``docker-compose``; skip only without docker at all."""
    docker = shutil.which("docker")
    if docker is not None:
        plugin = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30, check=False)
        if plugin.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone is not None:
        return [standalone]
    if docker is None:
        pytest.skip("the docker binary is absent, so `docker compose config` cannot run here")
    pytest.fail("docker is installed without compose: install the compose plugin or Debian's docker-compose")


def test_docker_compose_config_validates() -> None:
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("FLATMTL_", "GRAFANA_"))}
    result = subprocess.run(
        [*_compose_command(), "--file", str(COMPOSE_FILE), "config", "--quiet"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
