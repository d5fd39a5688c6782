"""The output-level reference point: mask the forgotten classes' logits, with no other weight change.

The classifier head's bias of every forget class is set to `mask_value` (a large negative number), so those classes
are never predicted while every other output keeps its ranking. It is not unlearning (the features still encode the
class, and an attack on the logits sees it), but it bounds what a method earns at the output alone: a method's A_Dr
is best read against this one's, which is the original model's accuracy on the retained classes with the forget
classes removed from the argmax.
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from hf_pbu.models import head_linear

from ._common import labels_of

DATA_NEEDED = "forget only"
REFERENCE = "output-level reference point (forget classes' head bias set to a large negative value)"


@dataclass
class MaskLogitsConfig:
    mask_value: float = -1e4  # far below any logit, and within fp16's range
    seed: int = 0


@torch.no_grad()
def unlearn(
    model: nn.Module, forget_train: Dataset, retain_train: Dataset | None, config: MaskLogitsConfig
) -> nn.Module:
    forget_classes = torch.as_tensor(np.unique(labels_of(forget_train)))
    head = head_linear(model)
    if head is None or head.bias is None:
        raise ValueError("mask_logits needs a classifier head whose last layer is an nn.Linear with a bias.")
    head.bias[forget_classes.to(head.bias.device)] = config.mask_value
    return model
