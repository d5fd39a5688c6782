"""Fine-tune: continue training the original model on the retained data only, relying on catastrophic forgetting
to erase the forget classes (Golatkar et al., CVPR 2020; setting of Foster et al., "Fast Machine Unlearning
Without Retraining Through Selective Synaptic Dampening", AAAI 2024: 5 epochs, lr 0.02, SGD with momentum)."""

from dataclasses import dataclass

from torch import nn
from torch.utils.data import Dataset

from ._common import train_cross_entropy

DATA_NEEDED = "retain only"
REFERENCE = "Golatkar et al. 2020; 5 epochs at lr 0.02 as in Foster et al. 2024 (SSD)"


@dataclass
class FinetuneConfig:
    epochs: float = 5.0
    learning_rate: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    seed: int = 0


def unlearn(model: nn.Module, forget_train: Dataset | None, retain_train: Dataset, config: FinetuneConfig) -> nn.Module:
    return train_cross_entropy(
        model,
        retain_train,
        seed=config.seed,
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        optim="sgd",
        optim_args=f"momentum={config.momentum}",
        weight_decay=config.weight_decay,
    )
