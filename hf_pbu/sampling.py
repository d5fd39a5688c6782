"""Seeded subsets: every random sample the library draws (the Fisher's images, the attacks' members, the probe's
images) comes from here, so that one seed gives one sample everywhere."""

import numpy as np
from torch.utils.data import Dataset, Subset


def seeded_indices(total: int, count: int, seed: int | np.random.Generator, sort: bool = True) -> np.ndarray:
    """`count` distinct indices among `total`, drawn by `np.random.default_rng(seed)` (or by the generator given,
    to draw several subsets in turn), sorted unless `sort` is False."""
    indices = np.random.default_rng(seed).choice(total, count, replace=False)
    return np.sort(indices) if sort else indices


def seeded_subset(dataset: Dataset, cap: int | None, seed: int) -> Dataset:
    """At most `cap` items of `dataset`, drawn with `seed` and kept in dataset order (all of it when it is smaller or
    `cap` is None): `select` for a `datasets.Dataset`, whose fingerprint then names the sample, else a `Subset`."""
    if cap is None or len(dataset) <= cap:
        return dataset
    indices = seeded_indices(len(dataset), cap, seed).tolist()
    return dataset.select(indices) if callable(getattr(dataset, "select", None)) else Subset(dataset, indices)
