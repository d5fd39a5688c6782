"""Helpers shared by the baselines: seeded loaders, retain subsets, fresh copies and short `Trainer` runs."""

import copy
import tempfile

import numpy as np
import torch
from classifier_training import ClassifierTrainer
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from transformers import PrinterCallback, TrainingArguments

from hf_pbu.sampling import seeded_indices


def loader(dataset: Dataset, batch_size: int, seed: int, shuffle: bool = True) -> DataLoader:
    """A DataLoader over `{"pixel_values", "labels"}` items whose shuffling depends on `seed` only."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def labels_of(dataset: Dataset, batch_size: int = 256) -> np.ndarray:
    """All labels of `dataset`, in order (one pass over it)."""
    return np.concatenate([batch["labels"].numpy() for batch in loader(dataset, batch_size, 0, shuffle=False)])


def random_subset(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """A fixed random `fraction` of `dataset` (at least one sample)."""
    count = max(1, round(fraction * len(dataset)))
    return Subset(dataset, seeded_indices(len(dataset), count, seed).tolist())


def per_class_subset(dataset: Dataset, labels: np.ndarray, per_class: int, seed: int) -> Dataset:
    """At most `per_class` random samples of each class present in `labels` (the labels of `dataset`)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        indices = np.flatnonzero(labels == label)
        chosen.extend(indices[seeded_indices(len(indices), min(per_class, len(indices)), rng)].tolist())
    return Subset(dataset, sorted(chosen))


def reinitialised_copy(model: nn.Module, seed: int) -> nn.Module:
    """The same architecture with fresh random weights: every layer's `reset_parameters`, then the model's own
    `init_weights` when it has one (timm ResNets' fan-out init and zero-initialised last BN of each block)."""
    fresh = copy.deepcopy(model)
    torch.manual_seed(seed)
    for module in fresh.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    if callable(getattr(fresh, "init_weights", None)):
        fresh.init_weights()
    return fresh


def train_cross_entropy(
    model: nn.Module,
    dataset: Dataset,
    seed: int,
    epochs: float,
    learning_rate: float,
    batch_size: int,
    optim: str = "adamw_torch",
    optim_args: str | None = None,
    weight_decay: float = 0.0,
    lr_scheduler_type: str = "constant",
    output_dir: str | None = None,
) -> nn.Module:
    """Plain cross-entropy training with `ClassifierTrainer` (no checkpoints, no reports, no progress bar)."""
    args = TrainingArguments(
        output_dir=output_dir or tempfile.mkdtemp(prefix="hf_pbu_baseline_"),
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        optim=optim,
        optim_args=optim_args,
        weight_decay=weight_decay,
        lr_scheduler_type=lr_scheduler_type,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        seed=seed,
        data_seed=seed,
    )
    return run_trainer(model, args, dataset)


def run_trainer(model: nn.Module, args: TrainingArguments, dataset: Dataset) -> nn.Module:
    trainer = ClassifierTrainer(model=model, args=args, train_dataset=dataset)
    trainer.remove_callback(PrinterCallback)  # added by `disable_tqdm`; it would print every run's summary
    trainer.train()
    return trainer.model
