"""Which process this is, and its share of a dataset, from Accelerate's `PartialState`.

The Fisher gives each process a disjoint, unpadded slice of the forget set (a padded `DistributedSampler` would
count some samples twice) and sums the totals with Accelerate's `reduce`. `PartialState` knows the processes
whichever way they were started; nothing in hf_pbu calls `torch.distributed` itself.
"""

from accelerate import PartialState
from torch.utils.data import Dataset, Subset


def is_main_process() -> bool:
    return PartialState().is_main_process


def shard(dataset: Dataset) -> Dataset:
    """This process's disjoint, unpadded slice of `dataset` (every `num_processes`-th sample)."""
    state = PartialState()
    if state.num_processes == 1:
        return dataset
    return Subset(dataset, range(state.process_index, len(dataset), state.num_processes))
