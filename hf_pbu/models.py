"""Image classifiers of either family (timm or transformers): one call convention, one loader, one saver.

`load_classifier` reads the repo's config.json once to tell the family apart (timm's has "architecture" and
"pretrained_cfg", transformers' has "model_type"), then builds the model and the eval-time transform that the
model's own pretrained/preprocessor config describes. `save_classifier` writes the unlearned model back in the
format it came in, so it reloads with the same call a user already knows.
"""

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import timm
import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)
from timm.models import save_for_hf
from torch import nn
from torchvision import transforms
from transformers.utils import logging

logger = logging.get_logger(__name__)

Family = Literal["timm", "transformers"]
TIMM_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


def classifier_logits(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Logits of `model` for a batch: timm models return a tensor, transformers models an output with `.logits`."""
    output = model(pixel_values)
    return output if isinstance(output, torch.Tensor) else output.logits


def num_classes(model: nn.Module) -> int:
    """Number of output classes of a timm or transformers classifier."""
    model = getattr(model, "module", model)
    if hasattr(model, "num_classes"):
        return int(model.num_classes)
    return int(model.config.num_labels)


@dataclass
class LoadedClassifier:
    """A classifier and what is needed to feed it and to save it back in its own format.

    `label_names` is None when the checkpoint names no classes (or only generic ones such as LABEL_0).
    """

    model: nn.Module
    transform: Callable
    label_names: list[str] | None
    family: Family
    in_chans: int
    source: str
    image_processor: object | None = None  # transformers only: saved next to the model


def resolve_model_id(model_id: str) -> str:
    """`timm/<arch>` (no tag) -> the Hub repo of timm's default pretrained tag, e.g. timm/resnet50.a1_in1k."""
    org, _, name = model_id.partition("/")
    if org == "timm" and name and "." not in name and "@" not in name and timm.is_model(name):
        hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id
        if hub_id:
            logger.info(f"{model_id} resolves to timm's default pretrained weights {hub_id}")
            return hub_id
    return model_id


def _read_config(model_id: str, cache_dir: str | None, revision: str | None) -> dict:
    """The repo's (or folder's) config.json, with one error that says what to pass when there is none."""
    if os.path.isdir(model_id):
        path = os.path.join(model_id, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"The folder {model_id!r} has no config.json: pass a folder saved with timm's `save_for_hf` or "
                "transformers' `save_pretrained`, or a Hub model id."
            )
    else:
        try:
            path = hf_hub_download(model_id, "config.json", revision=revision, cache_dir=cache_dir)
        except (RepositoryNotFoundError, EntryNotFoundError, LocalEntryNotFoundError, HFValidationError) as err:
            raise ValueError(
                f"Cannot find the model {model_id!r} ({type(err).__name__}). Pass a Hub model id such as "
                "'timm/resnet50.a1_in1k' or 'google/vit-base-patch16-224', a local folder holding config.json, "
                "or 'local-dir:<folder>' for a timm folder; offline, the model must already be in the HF cache."
            ) from None
    with open(path) as f:
        return json.load(f)


def _family(config: dict, model_id: str) -> Family:
    if "architecture" in config and "pretrained_cfg" in config:
        return "timm"
    if "model_type" in config:
        return "transformers"
    raise ValueError(
        f"{model_id!r} is neither a timm model (config.json with 'architecture' and 'pretrained_cfg') nor a "
        "transformers model (config.json with 'model_type'): pass an image classifier from either library."
    )


def _specific_names(names: list[str] | None, count: int) -> list[str] | None:
    """Names, unless missing, of the wrong length, or the generic LABEL_i / i that carry no meaning."""
    if not names or len(names) != count:
        return None
    generic = all(name in (f"LABEL_{i}", str(i)) for i, name in enumerate(names))
    return None if generic else list(names)


def _load_timm(model_id: str, config: dict, source: str, cache_dir: str | None) -> LoadedClassifier:
    model = timm.create_model(model_id, pretrained=True, cache_dir=cache_dir)
    data_config = timm.data.resolve_model_data_config(model)
    transform = timm.data.create_transform(**data_config, is_training=False)
    names = config.get("label_names") or config["pretrained_cfg"].get("label_names")
    if isinstance(names, dict):
        names = [names[key] for key in sorted(names, key=int)]
    return LoadedClassifier(
        model=model,
        transform=transform,
        label_names=_specific_names(names, model.num_classes),
        family="timm",
        in_chans=int(data_config["input_size"][0]),
        source=source,
    )


_PIL_TO_TORCHVISION = {
    0: transforms.InterpolationMode.NEAREST,
    1: transforms.InterpolationMode.LANCZOS,
    2: transforms.InterpolationMode.BILINEAR,
    3: transforms.InterpolationMode.BICUBIC,
    4: transforms.InterpolationMode.BOX,
    5: transforms.InterpolationMode.HAMMING,
}


def processor_transform(processor) -> Callable:
    """Eval-time torchvision transform equivalent to a transformers image processor's resize/crop/normalise.

    ConvNeXt-style processors (`crop_pct` with a `shortest_edge` below 384) resize to shortest_edge / crop_pct
    and centre-crop, as the processor itself does.
    """
    resample = getattr(processor, "resample", None)
    interpolation = (
        resample if isinstance(resample, transforms.InterpolationMode)
        else _PIL_TO_TORCHVISION.get(
            int(resample) if resample is not None else 2, transforms.InterpolationMode.BILINEAR
        )
    )
    size, crop_size = getattr(processor, "size", None), getattr(processor, "crop_size", None)
    steps = []
    if getattr(processor, "do_resize", True) and size is not None:
        height, width, edge = _size(size, "height"), _size(size, "width"), _size(size, "shortest_edge")
        crop_pct = getattr(processor, "crop_pct", None)
        if height and width:
            steps.append(transforms.Resize((height, width), interpolation=interpolation))
        elif edge and crop_pct and edge < 384:
            steps += [transforms.Resize(int(edge / crop_pct), interpolation=interpolation), transforms.CenterCrop(edge)]
        elif edge and crop_pct:
            steps.append(transforms.Resize((edge, edge), interpolation=interpolation))
        elif edge:
            steps.append(transforms.Resize(edge, interpolation=interpolation))
    if getattr(processor, "do_center_crop", False) and crop_size is not None:
        steps.append(transforms.CenterCrop((_size(crop_size, "height"), _size(crop_size, "width"))))
    steps.append(transforms.ToTensor())
    if getattr(processor, "do_normalize", True) and getattr(processor, "image_mean", None) is not None:
        steps.append(transforms.Normalize(list(processor.image_mean), list(processor.image_std)))
    return transforms.Compose(steps)


def _size(size, key: str) -> int | None:
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def _load_transformers(model_id: str, config: dict, revision: str | None, cache_dir: str | None) -> LoadedClassifier:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    try:
        model = AutoModelForImageClassification.from_pretrained(model_id, revision=revision, cache_dir=cache_dir)
    except ValueError as err:
        raise ValueError(
            f"{model_id!r} (model_type {config.get('model_type')!r}) is not an image classifier that "
            "`AutoModelForImageClassification` can load: pass a model with an image-classification head "
            f"(ViT, ConvNeXt, ResNet, ...). ({str(err).splitlines()[0]})"
        ) from None
    try:
        processor = AutoImageProcessor.from_pretrained(model_id, revision=revision, cache_dir=cache_dir)
    except OSError as err:
        raise ValueError(
            f"{model_id!r} has no image processor config (preprocessor_config.json) giving its input size and "
            "normalisation: save the image processor next to the model (`image_processor.save_pretrained`). "
            f"({str(err).splitlines()[0]})"
        ) from None
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return LoadedClassifier(
        model=model,
        transform=processor_transform(processor),
        label_names=_specific_names(names, model.config.num_labels),
        family="transformers",
        in_chans=int(getattr(model.config, "num_channels", 3)),
        source=model_id,
        image_processor=processor,
    )


def load_classifier(model_id: str, revision: str | None = None, cache_dir: str | None = None) -> LoadedClassifier:
    """Load an image classifier from the Hub or a local folder, whichever library it was saved with.

    Accepts Hub ids of either family (`timm/<arch>` resolves to timm's default pretrained tag), timm's own
    `hf-hub:<repo>` and `local-dir:<folder>` names, and local folders holding a config.json.
    """
    if model_id.startswith(TIMM_PREFIXES):
        prefix, _, location = model_id.partition(":")
        if prefix == "local-dir":
            config = _read_config(location, cache_dir, revision)
        else:
            repo, _, rev = location.partition("@")
            config = _read_config(repo, cache_dir, rev or revision)
        return _load_timm(model_id, config, source=model_id, cache_dir=cache_dir)
    model_id = resolve_model_id(model_id)
    config = _read_config(model_id, cache_dir, revision)
    family = _family(config, model_id)
    if family == "timm":
        is_dir = os.path.isdir(model_id)
        timm_id = f"local-dir:{model_id}" if is_dir else f"hf-hub:{model_id}" + (f"@{revision}" if revision else "")
        return _load_timm(timm_id, config, source=model_id, cache_dir=cache_dir)
    return _load_transformers(model_id, config, revision, cache_dir)


def save_classifier(loaded: LoadedClassifier, model: nn.Module, output_dir: str) -> str:
    """Save `model` (the unlearned weights of `loaded.model`) in its source format; returns how to reload it."""
    model = getattr(model, "module", model).cpu()
    if loaded.family == "timm":
        model_config = {"label_names": list(loaded.label_names)} if loaded.label_names else None
        save_for_hf(model, output_dir, model_config=model_config, safe_serialization=True)
        return f"timm.create_model('local-dir:{os.path.abspath(output_dir)}', pretrained=True)"
    model.save_pretrained(output_dir)
    if loaded.image_processor is not None:
        loaded.image_processor.save_pretrained(output_dir)
    return f"AutoModelForImageClassification.from_pretrained('{os.path.abspath(output_dir)}')"
