"""UNSIR / Fast-Effective unlearning (Tarun, Chundawat, Mandal, Kankanhalli, "Fast Yet Effective Machine
Unlearning", IEEE TNNLS 2023; reference code github.com/vikram2000b/Fast-Machine-Unlearning).

1. Learn, for each forget class, a batch of error-maximising noise: minimise -CE(f(noise), forget class)
   + 0.1 * mean ||noise||^2 with the model frozen (Adam, lr 0.1, 5 epochs x 8 steps).
2. Impair: one epoch of cross-entropy on the noise (labelled with its forget class, repeated 20 times) mixed with
   a retain subset (up to 1000 images per class), at a high learning rate (Adam, lr 0.02).
3. Repair: one epoch on the retain subset alone (Adam, lr 0.01). Batch size 256 throughout.
The forget images themselves are only read for their labels and image shape.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from hf_pbu.models import classifier_logits, eval_mode

from ._common import labels_of, per_class_subset, train_cross_entropy

DATA_NEEDED = "forget + retain"
REFERENCE = "Tarun et al., IEEE TNNLS 2023 (UNSIR / Fast-Effective)"


@dataclass
class UNSIRConfig:
    batch_size: int = 256
    noise_steps: int = 40
    noise_learning_rate: float = 0.1
    noise_l2_weight: float = 0.1
    noise_repeats: int = 20
    retain_per_class: int = 1000
    impair_learning_rate: float = 0.02
    repair_learning_rate: float = 0.01
    impair_epochs: float = 1.0
    repair_epochs: float = 1.0
    seed: int = 0


class NoiseDataset(Dataset):
    """`repeats` passes over a batch of learned noise images, all labelled with their forget class."""

    def __init__(self, noise: torch.Tensor, label: int, repeats: int):
        self.noise, self.label, self.repeats = noise, label, repeats

    def __len__(self) -> int:
        return len(self.noise) * self.repeats

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.noise[index % len(self.noise)], "labels": self.label}


def error_maximising_noise(model: nn.Module, label: int, shape: tuple[int, ...], config: UNSIRConfig) -> torch.Tensor:
    """Noise whose cross-entropy for `label` is as high as possible, kept small by an L2 term."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(config.seed + label)
    noise = torch.randn((config.batch_size, *shape), generator=generator).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([noise], lr=config.noise_learning_rate)
    labels = torch.full((config.batch_size,), label, device=device)
    requires_grad = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    with eval_mode(model):
        for _ in range(config.noise_steps):
            logits = classifier_logits(model, noise)
            loss = (
                -F.cross_entropy(logits.float(), labels)
                + config.noise_l2_weight * noise.pow(2).flatten(1).sum(1).mean()
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for p, flag in zip(model.parameters(), requires_grad):
        p.requires_grad_(flag)
    return noise.detach().cpu()


def unlearn(model: nn.Module, forget_train: Dataset, retain_train: Dataset, config: UNSIRConfig) -> nn.Module:
    forget_classes = np.unique(labels_of(forget_train)).tolist()
    shape = tuple(forget_train[0]["pixel_values"].shape)
    noise = [
        NoiseDataset(error_maximising_noise(model, label, shape, config), label, config.noise_repeats)
        for label in forget_classes
    ]
    retain_subset = per_class_subset(retain_train, labels_of(retain_train), config.retain_per_class, config.seed)
    common = {"seed": config.seed, "batch_size": config.batch_size, "optim": "adamw_torch", "weight_decay": 0.0}
    model = train_cross_entropy(
        model, ConcatDataset([*noise, retain_subset]), epochs=config.impair_epochs,
        learning_rate=config.impair_learning_rate, **common,
    )
    return train_cross_entropy(
        model, retain_subset, epochs=config.repair_epochs, learning_rate=config.repair_learning_rate, **common
    )
