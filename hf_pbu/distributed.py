"""Sharding and reductions that work the same with one process or many (Accelerate / torch.distributed).

The library's own passes over data (Fisher, accuracy) give each rank a disjoint slice of the dataset instead of a
padded `DistributedSampler`, so that no sample is counted twice, and sum their totals across ranks.
"""

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Subset


def rank_and_world_size() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_and_world_size()[0] == 0


def shard(dataset: Dataset) -> Dataset:
    """This rank's disjoint, unpadded slice of `dataset` (every `world_size`-th sample)."""
    rank, world_size = rank_and_world_size()
    if world_size == 1:
        return dataset
    return Subset(dataset, range(rank, len(dataset), world_size))


def all_reduce_sum_(tensors: list[torch.Tensor]) -> None:
    """Sum each tensor over all ranks, in place (no-op with one process)."""
    if rank_and_world_size()[1] == 1:
        return
    for tensor in tensors:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
