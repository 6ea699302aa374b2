"""A refused workflow names the step and the field at fault."""

from __future__ import annotations

import pytest

from aias.core.errors import InvalidArgument
from aias.services.execution.domain import StepDefinition, validate_steps

SHAPE = StepDefinition("shape", "transform", {"expression": "id"})


@pytest.mark.parametrize(
    ("bad", "reason", "message"),
    [
        (
            StepDefinition("save", "artifact", {"name": "a.json", "format": "xml"}),
            "INVALID_STEP_CONFIG",
            "step 'save': steps[1].config.format must be one of",
        ),
        (
            StepDefinition("save", "slack", {}),
            "STEP_TYPE_COMING_SOON",
            "step 'save': steps[1].type",
        ),
        (
            StepDefinition("shape", "transform", {}),
            "DUPLICATE_STEP_ID",
            "step 'shape': steps[1].id",
        ),
        # PostgreSQL's jsonb holds no NUL, in a key or a value, however deep.
        (
            StepDefinition("pick", "transform", {"expression": "'a\x00'"}),
            "INVALID_STEP_CONFIG",
            "step 'pick': steps[1].config holds the character U+0000 (NUL)",
        ),
        (
            StepDefinition("check", "validate", {"schema": {"properties": {"k\x00": {}}}}),
            "INVALID_STEP_CONFIG",
            "step 'check': steps[1].config holds the character U+0000 (NUL)",
        ),
        (
            StepDefinition("check", "validate", {"schema": {"enum": [1, ["x\x00"]]}}),
            "INVALID_STEP_CONFIG",
            "step 'check': steps[1].config holds the character U+0000 (NUL)",
        ),
    ],
)
def test_the_refusal_names_the_step_and_field(
    bad: StepDefinition, reason: str, message: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_steps([SHAPE, bad])
    assert caught.value.reason == reason
    assert caught.value.message.startswith(message)
    assert caught.value.metadata == {"step_index": "1", "step_id": bad.id}


def test_a_bad_step_id_is_named_by_its_index() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_steps([SHAPE, StepDefinition("no spaces", "transform", {})])
    assert caught.value.message.startswith("steps[1].id must be")
    assert caught.value.metadata == {"step_index": "1"}
