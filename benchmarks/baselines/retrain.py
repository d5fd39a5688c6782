"""Retrain: the oracle. The same architecture trained from scratch, with the original model's own training recipe,
on the retained training data only. Exact unlearning by construction, and the reference every other method's
A_Dr is compared with (e.g. Chundawat et al., AAAI 2023; Foster et al., AAAI 2024).
"""

import dataclasses
from dataclasses import dataclass

from torch import nn
from torch.utils.data import Dataset
from transformers import TrainingArguments

from ._common import reinitialised_copy, run_trainer

DATA_NEEDED = "retain only"
REFERENCE = "Retraining from scratch on the retained data (exact unlearning; the oracle)."


@dataclass
class RetrainConfig:
    training_args: TrainingArguments | None = dataclasses.field(
        default=None, metadata={"help": "The recipe that trained the original model (epochs, optimiser, schedule)."}
    )
    seed: int = 0


def unlearn(model: nn.Module, forget_train: Dataset | None, retain_train: Dataset, config: RetrainConfig) -> nn.Module:
    if config.training_args is None:
        raise ValueError("Retrain needs the original model's training recipe: set `RetrainConfig.training_args`.")
    args = dataclasses.replace(config.training_args, seed=config.seed, data_seed=config.seed)
    return run_trainer(reinitialised_copy(model, config.seed), args, retain_train)
