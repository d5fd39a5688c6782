"""SCRUB (Kurmanji, Triantafillou, Hayes, Triantafillou, "Towards Unbounded Machine Unlearning", NeurIPS 2023;
reference code github.com/meghdadk/SCRUB).

The student starts as the original model; the teacher is a frozen copy of it. Each epoch alternates a max-step
(for the first `max_steps` epochs: one pass over the forget data that maximises KL(teacher || student)) and a
min-step (one pass over the retained data minimising gamma * CE + alpha * KL(teacher || student)). KL at
temperature 4, scaled by T^2. Defaults of the reference code's CIFAR setting: SGD (momentum 0.9, weight decay
5e-4) at lr 5e-4, 3 epochs, 2 max-steps, gamma 1, alpha 0.5, retain batches of 128 and forget batches of 32.
"""

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from hf_pbu.models import classifier_logits

from ._common import loader

DATA_NEEDED = "forget + retain"
REFERENCE = "Kurmanji et al., NeurIPS 2023 (SCRUB)"


@dataclass
class SCRUBConfig:
    epochs: int = 3
    max_steps: int = 2
    learning_rate: float = 5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    temperature: float = 4.0
    gamma: float = 1.0
    alpha: float = 0.5
    retain_batch_size: int = 128
    forget_batch_size: int = 32
    seed: int = 0


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the tempered softmaxes, times T^2, averaged over the batch."""
    student = F.log_softmax(student_logits.float() / temperature, -1)
    teacher = F.softmax(teacher_logits.float() / temperature, -1)
    return F.kl_div(student, teacher, reduction="batchmean") * temperature**2


def unlearn(model: nn.Module, forget_train: Dataset, retain_train: Dataset, config: SCRUBConfig) -> nn.Module:
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    device = next(model.parameters()).device
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
    )

    def step(batch: dict, maximise: bool) -> None:
        images, labels = batch["pixel_values"].to(device), batch["labels"].to(device)
        logits = classifier_logits(model, images)
        with torch.no_grad():
            teacher_logits = classifier_logits(teacher, images)
        divergence = distill_kl(logits, teacher_logits, config.temperature)
        if maximise:
            loss = -divergence
        else:
            loss = config.gamma * F.cross_entropy(logits.float(), labels) + config.alpha * divergence
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.train()
    for epoch in range(config.epochs):
        if epoch < config.max_steps:
            for batch in loader(forget_train, config.forget_batch_size, config.seed + epoch):
                step(batch, maximise=True)
        for batch in loader(retain_train, config.retain_batch_size, config.seed + epoch):
            step(batch, maximise=False)
    return model.eval()
