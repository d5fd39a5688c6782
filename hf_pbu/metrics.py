"""Predictions and accuracy of a classifier on a dataset, through Accelerate: the same figures in one process or many.

Each process runs its shard of a DataLoader prepared by `Accelerator.prepare_data_loader`, in the run's mixed
precision (`accelerator.autocast`), and `gather_for_metrics` collects the outputs, dropping the duplicates with
which the last shards are padded. Inputs go to the model's own device, so the gathered tensors live where the
collective backend expects them (the training device under a `Trainer`).
"""

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .models import classifier_logits
from .modes import eval_mode


@torch.no_grad()
def predictions(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 128,
    collate_fn=None,
    num_workers: int = 0,
    accelerator: Accelerator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [N, C] float32, labels [N]) of every sample of `dataset`, in dataset order, on CPU, identical on
    every process. `accelerator`: the run's (its processes and mixed precision); a default one when not given."""
    if len(dataset) == 0:
        raise ValueError("Cannot run the model on an empty dataset.")
    accelerator = accelerator or Accelerator()
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn, num_workers=num_workers)
    loader = accelerator.prepare_data_loader(loader, device_placement=False)
    logits, labels = [], []
    with eval_mode(model), accelerator.autocast():
        for batch in loader:
            batch_logits = classifier_logits(model, batch["pixel_values"].to(device)).float()
            batch_logits, batch_labels = accelerator.gather_for_metrics((batch_logits, batch["labels"].to(device)))
            logits.append(batch_logits.cpu())
            labels.append(batch_labels.cpu())
    return torch.cat(logits), torch.cat(labels)


def accuracy_of(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent of `logits` against `labels`."""
    return float(100.0 * (logits.argmax(-1) == labels).double().mean())


def accuracy(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 128,
    collate_fn=None,
    num_workers: int = 0,
    accelerator: Accelerator | None = None,
) -> float:
    """Top-1 accuracy in percent of `model` on `dataset` (items with `pixel_values` and `labels`), over the whole
    dataset whatever the number of processes."""
    return accuracy_of(*predictions(model, dataset, batch_size, collate_fn, num_workers, accelerator))
