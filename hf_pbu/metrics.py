"""Accuracy and per-sample predictions of a classifier on a dataset, computed the same way in one process or many."""

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .distributed import all_reduce_sum_, rank_and_world_size, shard
from .models import classifier_logits, num_classes
from .modes import eval_mode


@torch.no_grad()
def accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 128, collate_fn=None, num_workers: int = 0) -> float:
    """Top-1 accuracy in percent of `model` on `dataset` (items with `pixel_values` and `labels`).

    Under torch.distributed every rank evaluates a disjoint slice and the counts are summed, so the figure is
    the accuracy on the whole dataset whatever the number of processes.
    """
    if len(dataset) == 0:
        raise ValueError("Cannot measure accuracy on an empty dataset.")
    device = next(model.parameters()).device
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    loader = DataLoader(shard(dataset), batch_size=batch_size, collate_fn=collate_fn, num_workers=num_workers)
    with eval_mode(model):
        for batch in loader:
            logits = classifier_logits(model, batch["pixel_values"].to(device))
            labels = batch["labels"].to(device)
            counts[0] += (logits.argmax(-1) == labels).sum()
            counts[1] += labels.numel()
    all_reduce_sum_([counts])
    return float(100.0 * counts[0] / counts[1])


@torch.no_grad()
def predictions(
    model: nn.Module, dataset: Dataset, batch_size: int = 128, collate_fn=None, num_workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [N, C] float32, labels [N]) of every sample of `dataset`, in dataset order, on CPU.

    Under torch.distributed each rank computes its own slice (`shard`) into zeros and the tensors are summed, so
    every rank ends with the full, identical result.
    """
    rank, world_size = rank_and_world_size()
    device = next(model.parameters()).device
    logits = torch.zeros(len(dataset), num_classes(model), dtype=torch.float32, device=device)
    labels = torch.zeros(len(dataset), dtype=torch.long, device=device)
    loader = DataLoader(shard(dataset), batch_size=batch_size, collate_fn=collate_fn, num_workers=num_workers)
    done = 0
    with eval_mode(model):
        for batch in loader:
            batch_logits = classifier_logits(model, batch["pixel_values"].to(device)).float()
            rows = (torch.arange(done, done + len(batch_logits), device=device) * world_size) + rank
            logits[rows] = batch_logits
            labels[rows] = batch["labels"].to(device)
            done += len(batch_logits)
    all_reduce_sum_([logits, labels])
    return logits.cpu(), labels.cpu()
