"""Image classifiers of either family (timm or transformers): one call convention, one loader, their heads.

`load_classifier` reads the repo's config.json once to tell the family apart (timm's has "architecture" and
"pretrained_cfg", transformers' has "model_type"), then builds the model and the eval-time transform that the
model's own pretrained/preprocessor config describes. `PBUTrainer.save_model` writes the unlearned model back in the
format it came in, so it reloads with the same call a user already knows.
"""

import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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
from huggingface_hub.utils import validate_repo_id
from timm.models import parse_model_name
from timm.models._hub import hf_split
from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)

Family = Literal["timm", "transformers"]
TIMM_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


def classifier_logits(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Logits of `model` for a batch: timm models return a tensor, transformers models an output with `.logits` (or,
    for PP-LCNet, its first field, `last_hidden_state`, which its documentation reads as the logits)."""
    output = model(pixel_values)
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    return logits if logits is not None else output[0]


def num_classes(model: nn.Module) -> int:
    """Number of output classes of a timm or transformers classifier."""
    model = getattr(model, "module", model)
    if hasattr(model, "num_classes"):
        return int(model.num_classes)
    return int(model.config.num_labels)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode (BatchNorm uses running statistics, dropout is off), then restore.

    Each submodule's flag is restored individually: `model.train(was_training)` would also flip submodules that
    the caller had deliberately frozen in eval mode.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def eval_transform(model: nn.Module) -> Callable:
    """The eval-time transform that a timm model's own pretrained config describes."""
    return timm.data.create_transform(**timm.data.resolve_model_data_config(model), is_training=False)


def generic_label_names(names: Sequence[str]) -> bool:
    """Whether class names are the generic LABEL_i / i (transformers' and `datasets`' defaults): no meaning."""
    return all(name in (str(i), f"LABEL_{i}") for i, name in enumerate(names))


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


def parse_model_id(model_id: str) -> tuple[str, str, str | None]:
    """Where a model id points: ("local-dir", folder, None) for timm's `local-dir:<folder>` or an unprefixed path
    that exists, else ("hf-hub", repo id, revision or None) for a Hub id, with or without timm's `hf-hub:`
    (`hf_hub:`) prefix and `@revision` (parsed by timm's own `parse_model_name` and `hf_split`)."""
    if model_id.startswith(TIMM_PREFIXES):
        source, location = parse_model_name(model_id)
    else:
        source, location = ("local-dir" if os.path.exists(model_id) else "hf-hub"), model_id
    if source == "local-dir":
        return source, location, None
    if location.count("@") > 1:  # not a repo id: left whole, for the Hub's validation to name it
        return "hf-hub", location, None
    repo_id, revision = hf_split(location)
    return "hf-hub", repo_id, revision


def hub_model_id_of(source: str) -> str | None:
    """`source` as a Hub repo id (no `hf-hub:` prefix, no `@revision`), or None for a local folder."""
    kind, repo_id, _ = parse_model_id(source)
    if kind == "local-dir":
        return None
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return None
    return repo_id


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
    """transformers when config.json names a `model_type` (a timm model saved through transformers, model_type
    "timm_wrapper", also carries timm's "architecture" and "pretrained_cfg", but its weights are in transformers'
    layout); else timm for timm's own Hub layout."""
    if "model_type" in config:
        return "transformers"
    if "architecture" in config and "pretrained_cfg" in config:
        return "timm"
    raise ValueError(
        f"{model_id!r} is neither a timm model (config.json with 'architecture' and 'pretrained_cfg') nor a "
        "transformers model (config.json with 'model_type'): pass an image classifier from either library."
    )


def specific_names(names: list[str] | None, count: int) -> list[str] | None:
    """Names, unless missing, of the wrong length, or the generic LABEL_i / i that carry no meaning."""
    if not names or len(names) != count:
        return None
    return None if generic_label_names(names) else list(names)


def _load_timm(model_id: str, config: dict, source: str, cache_dir: str | None) -> LoadedClassifier:
    model = timm.create_model(model_id, pretrained=True, cache_dir=cache_dir)
    data_config = timm.data.resolve_model_data_config(model)
    transform = eval_transform(model)
    names = config.get("label_names") or config["pretrained_cfg"].get("label_names")
    if isinstance(names, dict):
        names = [names[key] for key in sorted(names, key=int)]
    return LoadedClassifier(
        model=model,
        transform=transform,
        label_names=specific_names(names, model.num_classes),
        family="timm",
        in_chans=int(data_config["input_size"][0]),
        source=source,
    )


class ProcessorTransform:
    """The eval-time transform of a transformers model: its image processor itself, on one image at a time."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


def processor_transform(processor) -> Callable:
    """A transform (PIL image -> pixel tensor) that runs a transformers image processor, as `with_image_transform`
    applies it."""
    return ProcessorTransform(processor)


# Image classifiers of the `AutoModelForImageClassification` mapping that take more than a batch of pixel values, which
# is all a run feeds: refused at load with the reason.
UNSUPPORTED_MODEL_TYPES = {
    "imagegpt": "it classifies colour-cluster token ids (`input_ids`), not pixel values",
    "shieldgemma2": "it is a vision-language model that reads a text prompt (`input_ids`) with the image",
    "siglip2": "it reads patches of varying layout with their `pixel_attention_mask` and `spatial_shapes`, not a "
    "fixed-size batch of pixel values (SigLIP, `model_type: siglip`, is supported)",
}


TRUST_REMOTE_CODE_RISK = ("--trust_remote_code runs the Python code of the model's repository on this machine, with "
                          "your permissions: pass it only for a repository whose code you have read and trust (pin "
                          "its --revision).")


def needs_remote_code(config: dict) -> bool:
    """Whether a transformers config.json names its own classes (`auto_map`) for a `model_type` transformers does
    not know: the model is built by the repository's own Python code."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return bool(config.get("auto_map")) and config.get("model_type") not in CONFIG_MAPPING_NAMES


def _load_transformers(model_id: str, config: dict, revision: str | None, cache_dir: str | None,
                       trust_remote_code: bool = False) -> LoadedClassifier:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model_type = config.get("model_type")
    if model_type in UNSUPPORTED_MODEL_TYPES:
        raise ValueError(f"{model_id!r} (model_type {model_type!r}) cannot be unlearned by hf_pbu: "
                         f"{UNSUPPORTED_MODEL_TYPES[model_type]}. Pass an image classifier that takes pixel values "
                         "alone (ViT, ConvNeXt, ResNet, a timm model, ...).")
    if needs_remote_code(config) and not trust_remote_code:
        raise ValueError(f"{model_id!r} (model_type {model_type!r}) is built by custom code in its repository, which "
                         f"is not run without --trust_remote_code. {TRUST_REMOTE_CODE_RISK}")
    # Always passed (False included), so that transformers never asks on stdin whether to run the code.
    loading = {"revision": revision, "cache_dir": cache_dir, "trust_remote_code": trust_remote_code}
    try:
        model = AutoModelForImageClassification.from_pretrained(model_id, **loading)
    except ValueError as err:
        raise ValueError(
            f"{model_id!r} (model_type {config.get('model_type')!r}) is not an image classifier that "
            "`AutoModelForImageClassification` can load: pass a model with an image-classification head "
            f"(ViT, ConvNeXt, ResNet, ...). ({str(err).splitlines()[0]})"
        ) from None
    try:
        processor = AutoImageProcessor.from_pretrained(model_id, **loading)
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
        label_names=specific_names(names, model.config.num_labels),
        family="transformers",
        in_chans=_transformers_in_chans(model.config),
        source=model_id,
        image_processor=processor,
    )


def _transformers_in_chans(config) -> int:
    """Input channels of a transformers classifier: `num_channels`, or a TimmWrapper's timm `pretrained_cfg`
    input size (C, H, W); 3 when neither says."""
    if getattr(config, "num_channels", None):
        return int(config.num_channels)
    input_size = (getattr(config, "pretrained_cfg", None) or {}).get("input_size")
    return int(input_size[0]) if input_size else 3


def load_classifier(model_id: str, revision: str | None = None, cache_dir: str | None = None,
                    trust_remote_code: bool = False) -> LoadedClassifier:
    """Load an image classifier from the Hub or a local folder, whichever library it was saved with.

    Accepts Hub ids of either family (`timm/<arch>` resolves to timm's default pretrained tag), timm's own
    `hf-hub:<repo>` and `local-dir:<folder>` names, and local folders holding a config.json. A transformers model
    built by its repository's own code (`auto_map`) loads only with `trust_remote_code`, which runs that code (off
    by default: refused with an error naming the flag, never a prompt on stdin).
    """
    if model_id.startswith(TIMM_PREFIXES):
        _, location, rev = parse_model_id(model_id)
        config = _read_config(location, cache_dir, rev or revision)
        return _load_timm(model_id, config, source=model_id, cache_dir=cache_dir)
    model_id = resolve_model_id(model_id)
    config = _read_config(model_id, cache_dir, revision)
    family = _family(config, model_id)
    if family == "timm":
        is_dir = os.path.isdir(model_id)
        timm_id = f"local-dir:{model_id}" if is_dir else f"hf-hub:{model_id}" + (f"@{revision}" if revision else "")
        return _load_timm(timm_id, config, source=model_id, cache_dir=cache_dir)
    return _load_transformers(model_id, config, revision, cache_dir, trust_remote_code)


# Attributes that hold a transformers classifier's head, tried in order: `classifier` for most families,
# `cls_classifier` for DeiT with its distillation head, `head` (SwiftFormer, PP-LCNet), `fc` (HGNetV2 and TextNet,
# whose `classifier` is a list of pooling modules).
HEAD_ATTRIBUTES = ("classifier", "cls_classifier", "head", "fc")


def _inner(model: nn.Module) -> nn.Module:
    """The classifier itself: inside a DistributedDataParallel / accelerate wrapper (`module`) and inside
    transformers' TimmWrapper (`timm_model`)."""
    model = getattr(model, "module", model)
    return getattr(model, "timm_model", model)


def last_linear(module: nn.Module) -> nn.Linear | None:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def classifier_head(model: nn.Module) -> nn.Module:
    """The module that turns the pooled features into logits; its input is what `penultimate_features` returns.

    timm models (also inside transformers' TimmWrapper): `get_classifier()`. transformers models: the first of
    `HEAD_ATTRIBUTES` that is a layer (not a list of modules) ending in an `nn.Linear` with one output per class, else
    the last such `nn.Linear` of the model (Perceiver's decoder). Families that average two heads (DeiT and LeViT with
    their distillation head, SwiftFormer) give their class-token head."""
    outer = getattr(model, "module", model)
    model = _inner(outer)
    if callable(getattr(model, "get_classifier", None)):
        return model.get_classifier()
    count = num_classes(outer) if hasattr(outer, "num_classes") or hasattr(outer, "config") else None

    def classifies(linear: nn.Module | None) -> bool:
        return isinstance(linear, nn.Linear) and count in (None, linear.out_features)

    for name in HEAD_ATTRIBUTES:
        module = getattr(model, name, None)
        if isinstance(module, nn.Module) and not isinstance(module, (nn.ModuleList, nn.ModuleDict)):
            if classifies(last_linear(module)):
                return module
    linear = next((m for m in reversed(list(model.modules())) if classifies(m) and count is not None), None)
    if linear is not None:
        return linear
    raise ValueError(
        f"Cannot find the classifier head of {type(model).__name__}: expected a timm model (`get_classifier()`), a "
        f"transformers *ForImageClassification with a `classifier` (or {', '.join(HEAD_ATTRIBUTES[1:])}) layer, or "
        f"an nn.Linear with one output per class."
    )


def head_linear(model: nn.Module) -> nn.Linear | None:
    """The last `nn.Linear` of the classifier head (transformers' ResNet head is Flatten -> Linear, LeViT's
    BatchNorm -> Linear), or None (a timm head that is a 1x1 convolution)."""
    return last_linear(classifier_head(model))
