"""The penultimate features of a classifier (what its head reads), and the labels of a dataset, for the evidence
and the attacks (`hf_pbu.evidence`, `hf_pbu.head_attacks`)."""

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..models import classifier_head, eval_mode


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel / accelerate wrapper, whose attributes (head, config) we need."""
    return getattr(model, "module", model)


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _loader(dataset: Dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def dataset_labels(dataset: Dataset, batch_size: int = 256) -> np.ndarray:
    """All labels of a dataset of `{"pixel_values", "labels"}` items, in order. One pass over it (the transform
    runs), since a transformed dataset may map its raw labels to the model's."""
    return np.concatenate(
        [np.asarray(batch["labels"]).reshape(-1) for batch in _loader(dataset, batch_size)]
    ).astype(np.int64)


@torch.no_grad()
def penultimate_features(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The pooled features [N, D] that the classifier head reads, for one batch (eval mode, no gradients).

    timm models expose them (`forward_head(..., pre_logits=True)`). For every other model the input of the head
    module is captured with a forward hook, so any transformers architecture works without knowing where it pools
    (ViT: the CLS token after the final layernorm; ConvNeXt/ResNet: the pooled output, flattened here).
    """
    inner = _unwrap(model)
    pixel_values = pixel_values.to(_device(inner))
    with eval_mode(inner):
        if callable(getattr(inner, "forward_head", None)) and callable(getattr(inner, "forward_features", None)):
            features = inner.forward_head(inner.forward_features(pixel_values), pre_logits=True)
            return features.flatten(1)
        captured: list[torch.Tensor] = []
        hook = classifier_head(inner).register_forward_hook(lambda module, args, output: captured.append(args[0]))
        try:
            inner(pixel_values)
        finally:
            hook.remove()
    if not captured:
        raise RuntimeError(f"The classifier head of {type(inner).__name__} was not called in its forward pass.")
    return captured[-1].flatten(1)


@torch.no_grad()
def dataset_features(model: nn.Module, dataset: Dataset, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features (float64, on CPU) and labels of every item of `dataset`."""
    features, labels = [], []
    for batch in _loader(dataset, batch_size):
        features.append(penultimate_features(model, batch["pixel_values"]).double().cpu().numpy())
        labels.append(np.asarray(batch["labels"]).reshape(-1))
    if not features:
        return np.empty((0, 0)), np.empty(0, dtype=np.int64)
    return np.concatenate(features), np.concatenate(labels).astype(np.int64)
