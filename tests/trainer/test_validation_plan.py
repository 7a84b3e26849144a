"""The CLI turns the spec's validation fields into the trainer's ValidationPlan."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.trainer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "request.json"


def test_validation_plan_from_spec() -> None:
    from iclora_api.documents import read_document
    from iclora_api.validation import spec_from_document, validate_spec
    from iclora_trainer.cli import _validation_plan

    spec = validate_spec(spec_from_document(read_document(str(EXAMPLE))))
    plan = _validation_plan(spec)
    assert len(plan.entries) == 1
    entry = plan.entries[0]
    assert entry.prompt == "repl4ce the billboard with a sunset"
    assert entry.mask_url == "https://example.com/mask.png"
    assert (plan.width, plan.height) == spec.validation_size
    assert plan.frames == spec.effective_validation_number_of_frames
    assert plan.stg_scale == spec.stg_scale and plan.negative_prompt == spec.validation_negative_prompt
