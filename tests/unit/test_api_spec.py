"""Every rule of the API model, with boundary values on both sides."""

from __future__ import annotations

import math

import pytest

from iclora_api import bucket_size, snap_frames
from iclora_api.v1alpha1 import DEFAULT_VALIDATION_NEGATIVE_PROMPT
from iclora_api.validation import SpecInvalid, spec_from_document, validate_spec

URL = "https://example.com/data.zip"
SAMPLE = {
    "videoUrl": "https://example.com/src.mp4",
    "maskUrl": "s3://bucket/mask.png",
    "referenceVideoUrl": "http://example.com/ref.mp4",
}


def errors_of(spec: dict) -> dict[str, str]:
    with pytest.raises(SpecInvalid) as info:
        validate_spec(spec)
    return {e.field: e.message for e in info.value.errors}


def ok(**fields):
    return validate_spec({"trainingDataUrl": URL, **fields})


def bad(**fields) -> dict[str, str]:
    return errors_of({"trainingDataUrl": URL, **fields})


def test_defaults_follow_the_product_spec():
    spec = ok()
    eff = spec.effective()
    assert eff["triggerPhrase"] == ""
    assert eff["rank"] == 32
    assert eff["numberOfSteps"] == 3000
    assert eff["learningRate"] == pytest.approx(0.0002)
    assert eff["numberOfFrames"] == 89
    assert eff["frameRate"] == 24
    assert eff["resolution"] == "medium"
    assert eff["aspectRatio"] == "1:1"
    assert eff["autoScaleInput"] is False
    assert eff["splitInputIntoScenes"] is False
    assert eff["splitInputDurationThreshold"] == 30.0
    assert eff["validation"] == []
    assert eff["validationNegativePrompt"] == DEFAULT_VALIDATION_NEGATIVE_PROMPT
    assert eff["validationNumberOfFrames"] == 89
    assert eff["validationFrameRate"] == 24
    assert eff["validationResolution"] == "high"
    assert eff["validationAspectRatio"] == "1:1"
    assert eff["stgScale"] == 1.0
    assert eff["debugDataset"] is False
    assert eff["suspend"] is False
    assert spec.size == (768, 768)
    assert spec.validation_size == (960, 960)


def test_training_data_url_is_required():
    assert errors_of({}) == {"spec.trainingDataUrl": "required field is missing"}


@pytest.mark.parametrize("url", ["http://h/x.zip", "https://h/x.zip", "s3://bucket/x.zip"])
def test_accepted_url_schemes(url):
    assert ok(trainingDataUrl=url).training_data_url == url


@pytest.mark.parametrize(
    "url",
    ["ftp://h/x.zip", "file:///tmp/x.zip", "h/x.zip", "https://", "s3://bucket", "s3://bucket/", "gs://b/x"],
)
def test_rejected_urls_name_the_field(url):
    errs = errors_of({"trainingDataUrl": url})
    assert list(errs) == ["spec.trainingDataUrl"]


@pytest.mark.parametrize(
    ("given", "effective"),
    [(9, 9), (10, 9), (16, 9), (17, 17), (88, 81), (89, 89), (90, 89), (100, 97), (120, 113), (121, 121)],
)
def test_frame_counts_snap_down_to_8k_plus_1(given, effective):
    spec = ok(numberOfFrames=given, validationNumberOfFrames=given)
    assert spec.number_of_frames == given  # the user's value is never rewritten
    assert spec.effective_number_of_frames == effective
    assert spec.effective()["numberOfFrames"] == effective
    assert spec.effective()["validationNumberOfFrames"] == effective


@pytest.mark.parametrize("field", ["numberOfFrames", "validationNumberOfFrames"])
@pytest.mark.parametrize(("value", "valid"), [(8, False), (9, True), (121, True), (122, False), (0, False)])
def test_frame_count_range(field, value, valid):
    if valid:
        ok(**{field: value})
    else:
        assert f"spec.{field}" in bad(**{field: value})


@pytest.mark.parametrize(("value", "valid"), [(99, False), (100, True), (20000, True), (20001, False)])
def test_number_of_steps_range(value, valid):
    if valid:
        assert ok(numberOfSteps=value).number_of_steps == value
    else:
        assert "spec.numberOfSteps" in bad(numberOfSteps=value)


@pytest.mark.parametrize("field", ["frameRate", "validationFrameRate"])
@pytest.mark.parametrize(("value", "valid"), [(7, False), (8, True), (60, True), (61, False)])
def test_frame_rate_range(field, value, valid):
    if valid:
        ok(**{field: value})
    else:
        assert f"spec.{field}" in bad(**{field: value})


@pytest.mark.parametrize("rank", [8, 16, 32, 64, 128])
def test_ranks_accepted(rank):
    assert ok(rank=rank).rank == rank


@pytest.mark.parametrize("rank", [0, 4, 12, 33, 256, "32", True, None])
def test_other_ranks_rejected(rank):
    assert "spec.rank" in bad(rank=rank)


@pytest.mark.parametrize(
    ("value", "valid"), [(0.0, True), (3.0, True), (3.01, False), (-0.01, False), (1, True)]
)
def test_stg_scale_range(value, valid):
    if valid:
        assert ok(stgScale=value).stg_scale == value
    else:
        assert "spec.stgScale" in bad(stgScale=value)


@pytest.mark.parametrize(
    ("value", "valid"), [(0.99, False), (1.0, True), (1, True), (60.0, True), (60.01, False), (61, False)]
)
def test_split_duration_threshold_range(value, valid):
    if valid:
        ok(splitInputDurationThreshold=value)
    else:
        assert "spec.splitInputDurationThreshold" in bad(splitInputDurationThreshold=value)


@pytest.mark.parametrize(("value", "valid"), [(1e-4, True), (1, True), (0, False), (-1e-4, False)])
def test_learning_rate_positive(value, valid):
    if valid:
        assert ok(learningRate=value).learning_rate == value
    else:
        assert "spec.learningRate" in bad(learningRate=value)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, "0.0002"])
def test_learning_rate_finite_number(value):
    assert "spec.learningRate" in bad(learningRate=value)


@pytest.mark.parametrize(
    ("resolution", "aspect", "size"),
    [
        ("low", "16:9", (512, 288)),
        ("low", "1:1", (512, 512)),
        ("low", "9:16", (288, 512)),
        ("medium", "16:9", (768, 448)),
        ("medium", "1:1", (768, 768)),
        ("medium", "9:16", (448, 768)),
        ("high", "16:9", (960, 544)),
        ("high", "1:1", (960, 960)),
        ("high", "9:16", (544, 960)),
    ],
)
def test_bucket_table(resolution, aspect, size):
    assert bucket_size(resolution, aspect) == size
    spec = ok(resolution=resolution, aspectRatio=aspect, validationResolution=resolution,
              validationAspectRatio=aspect)
    assert spec.size == size
    assert spec.validation_size == size
    assert all(side % 32 == 0 for side in size)


@pytest.mark.parametrize(
    ("field", "value"),
    [("resolution", "ultra"), ("aspectRatio", "4:3"), ("validationResolution", "HIGH"),
     ("validationAspectRatio", 61)],
)
def test_enums_rejected(field, value):
    assert f"spec.{field}" in bad(**{field: value})


def test_scene_splitting_rejected_with_reason():
    errs = bad(splitInputIntoScenes=True)
    assert "desync" in errs["spec.splitInputIntoScenes"]
    assert "reference, target and mask" in errs["spec.splitInputIntoScenes"]
    assert ok(splitInputIntoScenes=False).split_input_into_scenes is False


def test_validation_entries():
    spec = ok(validation=[SAMPLE, {**SAMPLE, "prompt": "a sunset"}])
    assert [v.prompt for v in spec.validation] == ["", "a sunset"]
    errs = bad(validation=[SAMPLE, SAMPLE, SAMPLE])
    assert "spec.validation" in errs


@pytest.mark.parametrize("missing", ["videoUrl", "maskUrl", "referenceVideoUrl"])
def test_validation_entry_requires_every_url(missing):
    entry = {k: v for k, v in SAMPLE.items() if k != missing}
    assert bad(validation=[SAMPLE, entry]) == {f"spec.validation[1].{missing}": "required field is missing"}


def test_validation_urls_checked():
    errs = bad(validation=[{**SAMPLE, "maskUrl": "ftp://h/m.png"}])
    assert list(errs) == ["spec.validation[0].maskUrl"]


def test_unknown_fields_are_named():
    errs = bad(rnak=32, validation=[{**SAMPLE, "promt": "x"}])
    assert errs["spec.rnak"] == "unknown field 'rnak'"
    assert errs["spec.validation[0].promt"] == "unknown field 'promt'"


@pytest.mark.parametrize(
    ("field", "value"),
    [("numberOfSteps", "3000"), ("numberOfSteps", 3000.5), ("autoScaleInput", "true"), ("autoScaleInput", 1),
     ("debugDataset", "yes"), ("triggerPhrase", 5), ("frameRate", True), ("stgScale", "1.0")],
)
def test_wrong_types_are_not_coerced(field, value):
    assert f"spec.{field}" in bad(**{field: value})


def test_integers_accepted_for_number_fields():
    spec = ok(learningRate=1, stgScale=2, splitInputDurationThreshold=10)
    assert (spec.learning_rate, spec.stg_scale, spec.split_input_duration_threshold) == (1.0, 2.0, 10.0)


def test_all_errors_reported_at_once():
    errs = errors_of({"rank": 7, "numberOfSteps": 5, "frameRate": 100, "bogus": 1})
    assert set(errs) == {
        "spec.trainingDataUrl", "spec.rank", "spec.numberOfSteps", "spec.frameRate", "spec.bogus"
    }


def test_cluster_fields():
    spec = ok(
        profileRef={"name": "h100-x8"},
        output={"url": "s3://artifacts/team-a", "credentialsSecretRef": {"name": "s3-creds"}},
        datasetCredentialsSecretRef={"name": "data-creds"},
        suspend=True,
    )
    assert spec.profile_ref.name == "h100-x8"
    assert spec.output.credentials_secret_ref.name == "s3-creds"
    assert spec.suspend is True
    assert "spec.profileRef.name" in bad(profileRef={"name": "Not_A_Name"})
    assert "spec.output.url" in bad(output={"url": "https://not-s3/x"})
    assert "spec.output.credentialsSecretRef.namespace" in bad(
        output={"url": "s3://artifacts/x", "credentialsSecretRef": {"name": "a", "namespace": "other"}}
    )


def test_snake_case_request_maps_to_camel_case_fields():
    doc = {"training_data_url": URL, "number_of_frames": 100, "validation": [
        {"video_url": SAMPLE["videoUrl"], "mask_url": SAMPLE["maskUrl"]}]}
    with pytest.raises(SpecInvalid) as info:
        validate_spec(spec_from_document(doc))
    assert [e.field for e in info.value.errors] == ["spec.validation[0].referenceVideoUrl"]


def test_manifest_kind_and_version_checked():
    with pytest.raises(SpecInvalid) as info:
        spec_from_document({"apiVersion": "v1", "kind": "ConfigMap", "spec": {}})
    assert {e.field for e in info.value.errors} == {"kind", "apiVersion"}


def test_snap_frames_function():
    assert [snap_frames(n) for n in (1, 8, 9, 90, 100, 121, 122)] == [1, 1, 9, 89, 97, 121, 121]


@pytest.mark.parametrize(
    ("resolution", "aspect", "valid"),
    [("medium", "16:9", True), ("medium", "9:16", True), ("low", "1:1", True), ("high", "1:1", True),
     ("low", "16:9", False), ("high", "9:16", False)],
)
def test_reference_downscale_needs_buckets_it_divides(resolution, aspect, valid):
    fields = {"referenceDownscaleFactor": 2, "resolution": resolution, "aspectRatio": aspect}
    if valid:
        assert ok(**fields).reference_downscale_factor == 2
    else:
        (message,) = bad(**fields).values()
        w, h = bucket_size(resolution, aspect)
        assert "referenceDownscaleFactor 2" in message and f"{w}x{h}" in message and "multiples of 64" in message
    # Factor 1 (the default) fits every bucket.
    assert ok(resolution=resolution, aspectRatio=aspect).reference_downscale_factor == 1


def test_reference_downscale_checks_the_validation_bucket_only_with_entries():
    fields = {"referenceDownscaleFactor": 2, "validationResolution": "high", "validationAspectRatio": "16:9"}
    assert ok(**fields).reference_downscale_factor == 2
    (message,) = bad(**fields, validation=[SAMPLE]).values()
    assert "validationResolution/validationAspectRatio" in message and "960x544" in message


@pytest.mark.parametrize("factor", [0, 3, 4, "2"])
def test_reference_downscale_factor_values(factor):
    assert "spec.referenceDownscaleFactor" in bad(referenceDownscaleFactor=factor)
