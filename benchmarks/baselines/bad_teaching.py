"""Bad Teaching (Chundawat, Tarun, Mandal, Kankanhalli, "Can Bad Teaching Induce Forgetting? Unlearning in Deep
Networks Using an Incompetent Teacher", AAAI 2023; reference code github.com/vikram2000b/bad-teaching-unlearning).

The student (the original model) is distilled, by KL divergence at temperature 1, towards the competent teacher
(a frozen copy of the original model) on retained data and towards an incompetent teacher (the same architecture,
randomly initialised) on forget data. Defaults of the reference code: a random 30% of the retained training data,
one epoch, Adam at lr 1e-4, batch size 256.
"""

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from hf_pbu.models import classifier_logits

from ._common import loader, random_subset, reinitialised_copy

DATA_NEEDED = "forget + retain"
REFERENCE = "Chundawat et al., AAAI 2023 (Bad Teaching)"


@dataclass
class BadTeachingConfig:
    retain_fraction: float = 0.3
    epochs: int = 1
    learning_rate: float = 1e-4
    batch_size: int = 256
    temperature: float = 1.0
    seed: int = 0


class Tagged(Dataset):
    """Items of `dataset` with an `is_forget` flag, so each sample picks its teacher."""

    def __init__(self, dataset: Dataset, is_forget: bool):
        self.dataset, self.is_forget = dataset, is_forget

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "is_forget": self.is_forget}


def unlearn(model: nn.Module, forget_train: Dataset, retain_train: Dataset, config: BadTeachingConfig) -> nn.Module:
    competent = copy.deepcopy(model).eval().requires_grad_(False)
    incompetent = reinitialised_copy(model, config.seed).eval().requires_grad_(False)
    data = ConcatDataset([
        Tagged(forget_train, True), Tagged(random_subset(retain_train, config.retain_fraction, config.seed), False)
    ])
    device = next(model.parameters()).device
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    temperature = config.temperature
    model.train()
    for epoch in range(config.epochs):
        for batch in loader(data, config.batch_size, config.seed + epoch):
            images = batch["pixel_values"].to(device)
            is_forget = batch["is_forget"].to(device)[:, None]
            with torch.no_grad():
                good = F.softmax(classifier_logits(competent, images).float() / temperature, -1)
                bad = F.softmax(classifier_logits(incompetent, images).float() / temperature, -1)
            student = F.log_softmax(classifier_logits(model, images).float() / temperature, -1)
            loss = F.kl_div(student, torch.where(is_forget, bad, good), reduction="batchmean")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()
