"""Image classifiers of either family (timm or transformers) behind one call convention."""

import torch
from torch import nn


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
