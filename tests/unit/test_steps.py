"""Step types and workflow validation: deterministic outputs and clear errors for bad configs."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from typing import Any

import pytest

from aias.core.errors import InvalidArgument
from aias.services.execution import steps
from aias.services.execution.domain import StepDefinition, decode_payload, validate_steps
from aias.services.execution.steps import StepContext, StepFailed, canonical_json, run_step

ORDER = {"id": "o-1", "items": [{"sku": "a", "price": 2.5}, {"sku": "b", "price": 4}]}


def test_canonical_json_is_sorted_compact_utf8_without_newline() -> None:
    assert canonical_json({"b": 1, "a": ["é", None]}) == '{"a":["é",null],"b":1}'.encode()


def test_transform_then_json_artifact_is_byte_stable() -> None:
    shaped = run_step("transform", {"expression": "{order: id, total: sum(items[].price)}"}, ORDER)
    first = run_step("artifact", {"name": "summary.json", "format": "json"}, shaped.value)
    again = run_step("artifact", {"name": "summary.json", "format": "json"}, dict(shaped.value))
    assert first.artifact is not None
    assert again.artifact is not None
    assert first.artifact.content == b'{"order":"o-1","total":6.5}'
    assert (
        hashlib.sha256(first.artifact.content).digest()
        == hashlib.sha256(again.artifact.content).digest()
    )
    assert first.artifact.media_type == "application/json"


def test_csv_artifact_uses_sorted_union_of_keys() -> None:
    result = run_step(
        "artifact",
        {"name": "rows.csv", "format": "csv"},
        [{"b": 1, "a": "x"}, {"a": "y", "c": {"k": True}}],
    )
    assert result.artifact is not None
    assert result.artifact.content == b'a,b,c\nx,1,\ny,,"{""k"":true}"\n'


def test_filter_false_stops_the_run() -> None:
    assert run_step("filter", {"condition": "total > `10`"}, {"total": 3}).stop
    assert not run_step("filter", {"condition": "total > `10`"}, {"total": 30}).stop


def test_template_renders_in_a_sandbox() -> None:
    result = run_step("template", {"template": "Order {{ input.id }}"}, ORDER)
    assert result.value == "Order o-1"
    with pytest.raises(StepFailed, match="template rendering failed"):
        run_step("template", {"template": "{{ input.__class__.__mro__ }}"}, ORDER)


def test_a_template_is_compiled_once_and_rendered_with_each_runs_values() -> None:
    template = "Order {{ input.id }} for {{ run.id }} (compiled once)"
    before = steps._cached_template.cache_info()
    first = run_step("template", {"template": template}, {"id": "a"}, StepContext(run={"id": 1}))
    second = run_step("template", {"template": template}, {"id": "b"}, StepContext(run={"id": 2}))
    after = steps._cached_template.cache_info()

    assert (first.value, second.value) == (
        "Order a for 1 (compiled once)",
        "Order b for 2 (compiled once)",
    )
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)


def test_a_long_template_renders_without_being_kept() -> None:
    template = "{{ input.id }}" + " " * steps.CACHED_TEMPLATE_CHARS
    before = steps._cached_template.cache_info()

    assert run_step("template", {"template": template}, {"id": "x"}).value.startswith("x ")
    assert steps._cached_template.cache_info() == before


def test_template_sees_input_run_and_workflow() -> None:
    context = StepContext(
        run={"id": "r-1", "attempt": 2, "create_time": "2026-01-02T03:04:05Z"},
        workflow={"id": "w-1", "version": 3},
    )
    template = "{{ input.id }} {{ run.id }}#{{ run.attempt }} {{ run.create_time }} {{ workflow.id }}@v{{ workflow.version }}"
    assert (
        run_step("template", {"template": template}, ORDER, context).value
        == "o-1 r-1#2 2026-01-02T03:04:05Z w-1@v3"
    )


def test_validate_reports_the_failing_path() -> None:
    schema = {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}}
    assert run_step("validate", {"schema": schema}, {"id": "x"}).value == {"id": "x"}
    with pytest.raises(StepFailed, match="at id"):
        run_step("validate", {"schema": schema}, {"id": 5})


@pytest.mark.parametrize(
    ("steps", "reason"),
    [
        ([], "NO_STEPS"),
        ([StepDefinition("a b", "transform", {"expression": "x"})], "INVALID_STEP_ID"),
        (
            [
                StepDefinition("a", "transform", {"expression": "x"}),
                StepDefinition("a", "transform", {"expression": "y"}),
            ],
            "DUPLICATE_STEP_ID",
        ),
        ([StepDefinition("a", "teleport", {})], "UNKNOWN_STEP_TYPE"),
        ([StepDefinition("a", "slack", {"channel": "#x"})], "STEP_TYPE_COMING_SOON"),
        ([StepDefinition("a", "transform", {"expression": "items[?"})], "INVALID_STEP_CONFIG"),
        ([StepDefinition("a", "validate", {"schema": {"type": "nope"}})], "INVALID_STEP_CONFIG"),
        ([StepDefinition("a", "template", {"template": "{% if %}"})], "INVALID_STEP_CONFIG"),
        (
            [StepDefinition("a", "artifact", {"name": "x.bin", "format": "parquet"})],
            "INVALID_STEP_CONFIG",
        ),
        (
            [StepDefinition("a", "artifact", {"name": "../x", "format": "json"})],
            "INVALID_STEP_CONFIG",
        ),
    ],
)
def test_bad_workflows_are_rejected_with_a_reason(steps: list[StepDefinition], reason: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_steps(steps)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b'{"a":1}', "application/json", {"a": 1}),
        (b'{"a":1}', "application/x-www-form-urlencoded", {"a": 1}),
        (
            b"a=1&b=2&b=3",
            "application/x-www-form-urlencoded",
            {"content_type": "application/x-www-form-urlencoded", "text": "a=1&b=2&b=3"},
        ),
        (b"hello", "text/plain", {"content_type": "text/plain", "text": "hello"}),
        (b"", "", None),
    ],
)
def test_payload_decoding(body: bytes, content_type: str, expected: Any) -> None:
    assert decode_payload(body, content_type) == expected


def test_invalid_json_payload_is_rejected() -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode_payload(b"{nope", "application/json")
    assert caught.value.reason == "INVALID_PAYLOAD"


@pytest.mark.parametrize(
    "module", ["aias.services.execution.worker_main", "aias.services.execution.alerts_main"]
)
def test_processes_that_run_no_step_do_not_load_the_step_libraries(module: str) -> None:
    # A worker hands steps to its step processes and the alert senders render none: each would
    # carry some 4 MiB of Jinja, jsonschema and JMESPath for nothing.
    program = (
        f"import sys, {module}\n"
        "print(sorted(m for m in ('jinja2', 'jsonschema', 'jmespath') if m in sys.modules))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == "[]"


def test_the_step_libraries_load_on_demand() -> None:
    steps.load_libraries()
    assert {"jinja2", "jsonschema", "jmespath"} <= set(sys.modules)
