"""Selective Synaptic Dampening (Foster, Schoepf, Brintrup, "Fast Machine Unlearning Without Retraining Through
Selective Synaptic Dampening", AAAI 2024; reference code github.com/if-loops/selective-synaptic-dampening).

No training. With importances []_D (on the full training data) and []_Df (on the forget data), every parameter
whose forget importance exceeds alpha times its full importance is multiplied by
beta = min(lambda * []_D / []_Df, 1). Defaults of the paper: alpha = 10, lambda = 1.

Importances, as in the reference code (`importance="minibatch"`): the squared gradient of the mean cross-entropy of
each mini-batch (64 images, model in eval mode), averaged over the batches of the forget data and of the full
training data. The reference's full-data loader is unshuffled and its retain set is built class by class, so its
batches hold one class each (`full_data_order="by_class"`, reproduced here: the method is then deterministic);
with shuffled, mixed-class batches the gradients cancel, the full importance shrinks and far more parameters are
dampened (on digits, A_Dr fell to 22-46% for classes 6 and 8). `importance="per_sample"` uses the diagonal
empirical Fisher instead (squared per-sample gradients, `hf_pbu.fisher.compute_fisher_diagonal`), whose full-data
value is the sample-weighted mean of the forget and retain ones: then forget/full can never exceed N/N_forget (about
the number of classes), so the published alpha = 10 selects almost nothing (on digits, A_Df stayed at 100%).
Mini-batch squares are large only where a whole batch's gradients agree, as they do within one class, which is what
alpha = 10 was tuned for.
"""

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, Dataset, Subset

from hf_pbu.models import classifier_logits, eval_mode
from hf_pbu.objective.fisher import compute_fisher_diagonal

from ._common import labels_of, loader

DATA_NEEDED = "forget + retain"
REFERENCE = "Foster et al., AAAI 2024 (SSD)"


@dataclass
class SSDConfig:
    alpha: float = 10.0
    dampening_constant: float = 1.0
    batch_size: int = 64
    importance: Literal["minibatch", "per_sample"] = "minibatch"
    full_data_order: Literal["by_class", "shuffled"] = "by_class"
    seed: int = 0


def minibatch_importance(
    model: nn.Module, dataset: Dataset, batch_size: int, seed: int, shuffle: bool
) -> dict[str, torch.Tensor]:
    """Mean over mini-batches of the squared gradient of the batch's mean cross-entropy."""
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    sums = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in named.items()}
    batches = 0
    device = next(model.parameters()).device
    with eval_mode(model):
        for batch in loader(dataset, batch_size, seed, shuffle=shuffle):
            logits = classifier_logits(model, batch["pixel_values"].to(device))
            loss = F.cross_entropy(logits.float(), batch["labels"].to(device))
            grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
            for name, grad in zip(named, grads):
                if grad is not None:
                    sums[name] += grad.float().pow(2)
            batches += 1
    return {name: value / batches for name, value in sums.items()}


def per_sample_importance(model: nn.Module, dataset: Dataset, batch_size: int) -> dict[str, torch.Tensor]:
    return compute_fisher_diagonal(
        model, loader(dataset, batch_size, 0, shuffle=False), estimator="empirical", show_progress=False
    )


@torch.no_grad()
def dampen(
    model: nn.Module, full: dict[str, torch.Tensor], forget: dict[str, torch.Tensor], alpha: float, dampening: float
) -> int:
    """Dampen the parameters specialised on the forget data in place; returns how many were changed."""
    changed = 0
    for name, param in model.named_parameters():
        if name not in forget:
            continue
        selected = forget[name] > alpha * full[name]
        factor = (dampening * full[name] / forget[name]).clamp(max=1.0)
        param[selected] *= factor[selected].to(param.dtype)
        changed += int(selected.sum())
    return changed


def unlearn(model: nn.Module, forget_train: Dataset, retain_train: Dataset, config: SSDConfig) -> nn.Module:
    if config.importance == "minibatch":
        by_class = config.full_data_order == "by_class"
        if by_class:  # the reference's order: retained classes one after another, then the forget data
            retain_train = Subset(retain_train, np.argsort(labels_of(retain_train), kind="stable").tolist())
        full_data = ConcatDataset([retain_train, forget_train])
        forget = minibatch_importance(model, forget_train, config.batch_size, config.seed, shuffle=False)
        full = minibatch_importance(model, full_data, config.batch_size, config.seed, shuffle=not by_class)
    else:
        forget = per_sample_importance(model, forget_train, config.batch_size)
        retain = per_sample_importance(model, retain_train, config.batch_size)
        n_forget, n_retain = len(forget_train), len(retain_train)
        full = {name: (n_forget * forget[name] + n_retain * retain[name]) / (n_forget + n_retain) for name in forget}
    dampen(model, full, forget, config.alpha, config.dampening_constant)
    return model
