"""`load_classifier` and the trainer's save for both families, from folders, an offline HF cache and bad ids."""

import os
import shutil

import huggingface_hub
import pytest
import timm
import torch
from conftest import TINY_CLASSES, TINY_REPOS
from PIL import Image
from tiny_models import DictDataset
from transformers import AutoModelForImageClassification, BertConfig

from hf_pbu import PBUConfig, PBUTrainer
from hf_pbu.io.model_card import card_datasets, load_base_card
from hf_pbu.models import (
    classifier_logits,
    load_classifier,
    processor_transform,
    resolve_model_id,
)


@pytest.fixture
def offline_cache(monkeypatch, hf_cache):
    """What HF_HUB_OFFLINE=1 HF_HUB_CACHE=<cache> does, for this process (huggingface_hub reads both at import)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", hf_cache)
    return hf_cache


@pytest.mark.parametrize("family", ["timm", "transformers"])
def test_loads_from_offline_cache_by_repo_id(offline_cache, family):
    loaded = load_classifier(TINY_REPOS[family])
    assert loaded.family == family
    assert loaded.label_names == TINY_CLASSES
    assert loaded.in_chans == 3
    pixels = loaded.transform(Image.new("RGB", (50, 40)))
    assert pixels.shape == (3, 32, 32)
    assert classifier_logits(loaded.model.eval(), pixels[None]).shape == (1, 3)


@pytest.mark.parametrize("family", ["timm", "transformers"])
def test_save_reloads_in_source_format(tiny_model_dirs, tmp_path, family):
    loaded = load_classifier(tiny_model_dirs[family])
    with torch.no_grad():
        next(loaded.model.parameters()).add_(0.5)  # an "unlearned" change that must survive the round trip
    # As the command saves it: the trainer's `save_model`, in the source format.
    forget = DictDataset(torch.randn(2, 3, 32, 32), torch.tensor([0, 0]))
    args = PBUConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    PBUTrainer(model=loaded.model, args=args, train_dataset=forget, class_names=loaded.label_names,
               processing_class=loaded.image_processor).save_model()
    if family == "timm":
        reloaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True)
    else:
        reloaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = classifier_logits(loaded.model.eval(), pixels)
        torch.testing.assert_close(classifier_logits(reloaded.eval(), pixels), expected)
    assert load_classifier(str(tmp_path)).label_names == TINY_CLASSES


def test_timm_prefixes_load_the_same_model(tiny_model_dirs, offline_cache):
    from_dir = load_classifier(f"local-dir:{tiny_model_dirs['timm']}")
    from_hub = load_classifier(f"hf-hub:{TINY_REPOS['timm']}")
    for loaded in (from_dir, from_hub):
        assert loaded.family == "timm" and loaded.label_names == TINY_CLASSES
    torch.testing.assert_close(from_dir.model.state_dict(), from_hub.model.state_dict())


def test_timm_arch_resolves_to_default_pretrained_tag():
    assert resolve_model_id("timm/resnet50") == f"timm/resnet50.{timm.models.get_pretrained_cfg('resnet50').tag}"
    assert resolve_model_id("timm/resnet50.a1_in1k") == "timm/resnet50.a1_in1k"
    assert resolve_model_id("google/vit-base-patch16-224") == "google/vit-base-patch16-224"


def test_unknown_model_id_names_the_fix(offline_cache):
    with pytest.raises(ValueError, match="Cannot find the model 'org/no-such-model'.*Hub model id"):
        load_classifier("org/no-such-model")


def test_text_model_is_refused(tmp_path):
    BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
               intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not an image classifier"):
        load_classifier(str(tmp_path))


def test_card_datasets_from_hub_repo_and_folder(offline_cache, tiny_model_dirs, tmp_path):
    assert card_datasets(load_base_card(load_classifier(TINY_REPOS["timm"]).source)) == ["org/tiny-digits"]
    assert card_datasets(load_base_card(load_classifier(tiny_model_dirs["transformers"]).source)) == ["org/tiny-digits"]
    bare = load_classifier(tiny_model_dirs["timm"])
    bare.source = str(tmp_path)  # a folder without README.md
    assert card_datasets(load_base_card(bare.source)) == []


def test_transformers_model_without_image_processor_is_refused(tiny_model_dirs, tmp_path):
    folder = shutil.copytree(tiny_model_dirs["transformers"], tmp_path / "model")
    os.remove(folder / "preprocessor_config.json")
    with pytest.raises(ValueError, match="no image processor config"):
        load_classifier(str(folder))


def test_processor_transform_follows_the_processor():
    from transformers import ViTImageProcessor

    processor = ViTImageProcessor(size={"height": 20, "width": 24}, resample=3, image_mean=[0.2] * 3,
                                  image_std=[0.1] * 3)
    transform = processor_transform(processor)
    image = Image.new("RGB", (50, 40), color=(51, 51, 51))  # 0.2 after rescaling: 0 after normalising
    expected = processor(image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(transform(image), expected, atol=1e-2, rtol=0)
    assert transform(image).shape == (3, 20, 24)
