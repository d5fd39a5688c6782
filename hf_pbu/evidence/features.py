"""The penultimate features of a classifier: what its head reads, for the attacks and the probe."""

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..models import classifier_head, eval_mode


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel / accelerate wrapper, whose attributes (head, config) we need."""
    return getattr(model, "module", model)


def model_device(model: nn.Module) -> torch.device:
    """Where `model`'s parameters live (CPU for a model without any)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def in_order(dataset: Dataset, batch_size: int) -> DataLoader:
    """`dataset` in batches, in its own order."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


@torch.no_grad()
def penultimate_features(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The pooled features [N, D] that the classifier head reads, for one batch (eval mode, no gradients).

    timm models expose them (`forward_head(..., pre_logits=True)`). For every other model the input of the head
    module is captured with a forward hook, so any transformers architecture works without knowing where it pools
    (ViT: the CLS token after the final layernorm; ConvNeXt/ResNet: the pooled output, flattened here).
    """
    inner = unwrap_model(model)
    pixel_values = pixel_values.to(model_device(inner))
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


@dataclass(frozen=True)
class HeadInputs:
    """Penultimate features [N, D] (float32, CPU) and labels [N] of a dataset's images."""

    features: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@torch.no_grad()
def head_inputs(model: nn.Module, dataset: Dataset, batch_size: int = 64) -> HeadInputs:
    """The features that `model`'s head reads for every image of `dataset`, with their labels."""
    features, labels = [], []
    for batch in in_order(dataset, batch_size):
        features.append(penultimate_features(model, batch["pixel_values"]).float().cpu())
        labels.append(torch.as_tensor(batch["labels"]).reshape(-1).long())
    if not features:
        return HeadInputs(torch.empty(0, 0), torch.empty(0, dtype=torch.long))
    return HeadInputs(torch.cat(features), torch.cat(labels))
