"""The generated stubs match protos/, and every RPC follows the naming rules."""

from __future__ import annotations

from pathlib import Path

from aias.artifacts.v1 import artifacts_service_pb2
from aias.billing.v1 import billing_service_pb2
from aias.core import protogen
from aias.execution.v1 import execution_service_pb2
from aias.tenancy.v1 import tenancy_service_pb2

FILES = (tenancy_service_pb2, execution_service_pb2, artifacts_service_pb2, billing_service_pb2)


def test_generated_stubs_do_not_drift_from_protos() -> None:
    assert protogen.drift() == []


def test_drift_is_detected(tmp_path: Path) -> None:
    target = tmp_path
    protogen.generate(target, image=None)
    stale = target / "aias" / "tenancy" / "v1" / "tenancy_service_pb2.py"
    stale.write_text(stale.read_text() + "\n# edited by hand\n")
    assert protogen.drift(target) == ["aias/tenancy/v1/tenancy_service_pb2.py: differs"]


def test_one_service_per_file_named_after_its_package() -> None:
    for module in FILES:
        (service,) = module.DESCRIPTOR.services_by_name.values()
        package = module.DESCRIPTOR.package
        assert package.startswith("aias.")
        assert package.endswith(".v1")
        assert service.name.endswith("Service")
        for method in service.methods:
            assert method.input_type.name == f"{method.name}Request"
