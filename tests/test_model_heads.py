"""The classifier head of every image-classification family transformers maps (`AutoModelForImageClassification`)
and of timm's models, each built tiny from its config offline: `classifier_head`, `head_linear` and the penultimate
features that the evidence and the mask-logits reference read."""

import json

import pytest
import timm
import torch
from PIL import Image as PILImage
from tiny_transformers import IMAGE_SIZE, TEACHER_VARIANTS, TINY_CONFIGS, build_tiny, model_types

from hf_pbu.evidence import penultimate_features
from hf_pbu.models import UNSUPPORTED_MODEL_TYPES, classifier_head, classifier_logits, head_linear, load_classifier

CLASSES = 5
# Families whose logits average two heads (the class token's and a distillation head): the head found is the
# first, so its output alone is not the logits.
AVERAGED_HEADS = {"swiftformer", *TEACHER_VARIANTS.values()}
# Families that need what this machine does not have.
NEEDS = {"dinat": ("natten", "DiNAT's neighbourhood attention needs the `natten` kernels, not installed here")}


def _families() -> list:
    params = []
    for model_type in model_types():
        if model_type in UNSUPPORTED_MODEL_TYPES:
            reason = f"refused at load: {UNSUPPORTED_MODEL_TYPES[model_type]}"
            params.append(pytest.param(model_type, None, marks=pytest.mark.skip(reason=reason), id=model_type))
            continue
        params.append(pytest.param(model_type, None, id=model_type))
        if model_type in TEACHER_VARIANTS:
            params.append(pytest.param(model_type, TEACHER_VARIANTS[model_type], id=TEACHER_VARIANTS[model_type]))
    return params


def _check_head(model: torch.nn.Module, images: torch.Tensor, averaged: bool) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        logits = classifier_logits(model, images)
    assert logits.shape == (len(images), CLASSES)
    linear = head_linear(model)
    assert linear is not None and linear.out_features == CLASSES
    features = penultimate_features(model, images)
    assert features.shape == (len(images), linear.in_features)
    if not averaged:  # the head, applied to the features it reads, gives the model's logits
        with torch.no_grad():
            head_logits = classifier_head(model)(features).reshape(logits.shape)
        torch.testing.assert_close(head_logits, logits, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # the mask-logits reference: a very low bias on the head removes the class everywhere
        top = int(logits.argmax(-1)[0])
        linear.bias[top] = -1e4
        assert (classifier_logits(model, images).argmax(-1) != top).all()


def test_every_mapped_family_has_a_tiny_config():
    """A family added to transformers' mapping shows up here first: give it a tiny config (or a reason)."""
    assert set(model_types()) - set(UNSUPPORTED_MODEL_TYPES) == set(TINY_CONFIGS)


@pytest.mark.parametrize("model_type, architecture", _families())
def test_transformers_family_head(model_type, architecture):
    if model_type in NEEDS:
        pytest.importorskip(NEEDS[model_type][0], reason=NEEDS[model_type][1])
    model = build_tiny(model_type, CLASSES, architecture)
    images = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    _check_head(model, images, averaged=(architecture or model_type) in AVERAGED_HEADS)


@pytest.mark.parametrize("arch", timm.list_models("test_*"))
def test_timm_model_head(arch):
    model = timm.create_model(arch, num_classes=CLASSES).eval()
    images = torch.randn(2, *model.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(0))
    _check_head(model, images, averaged=False)


@pytest.mark.parametrize("model_type", sorted(UNSUPPORTED_MODEL_TYPES))
def test_families_that_take_more_than_pixels_are_refused_at_load(tmp_path, model_type):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(ValueError, match=f"model_type '{model_type}'.* cannot be unlearned by hf_pbu: "):
        load_classifier(str(tmp_path))


def test_timm_model_saved_through_transformers_loads_as_transformers(tmp_path):
    """config.json of a TimmWrapper carries timm's `architecture` and `pretrained_cfg` too; its weights are in
    transformers' layout (`timm_model.` prefix), so it loads (and saves back) through transformers."""
    model = build_tiny("timm_wrapper", CLASSES)
    model.save_pretrained(tmp_path)
    loaded = load_classifier(str(tmp_path))
    assert loaded.family == "transformers" and type(loaded.model).__name__ == "TimmWrapperForImageClassification"
    assert loaded.in_chans == 3 and loaded.transform(PILImage.new("RGB", (40, 50))).shape == (3, 32, 32)
    torch.testing.assert_close(loaded.model.state_dict(), model.state_dict())
