"""Spotter (Ha, Park, Yoon, "Unlearning's Blind Spots: Over-Unlearning and Prototypical Relearning Attack",
arXiv 2506.01318; reference code github.com/Seung-B/Spotter-Unlearning, `Spotter.ipynb` and `ov_utils.py`).

Class unlearning from the forget data alone. The teacher is a frozen copy of the original model; its softmax with the
forget classes' probabilities set to zero and the rest renormalised is the "masked teacher".

1. Neighbours, made once before training with the teacher in eval mode: for every forget image, one PGD
   perturbation (uniform random start in the L-inf ball, 3 signed-gradient steps of 0.01, projected back to the ball
   of radius 0.03) targeted at the class the teacher ranks highest after the true label (the runner-up).
2. 10 epochs over the forget data, in batches of 128, each paired with a batch of neighbours, minimising
       0.7 * KL(masked teacher || student) on the forget images
     + 0.3 * KL(masked teacher || student) on the neighbours          (weights lambda_1 and 1 - lambda_1)
     + 1.0 * dispersion of the forget images' penultimate features   (lambda_2)
   where dispersion is the mean cosine similarity over ordered pairs of distinct images of the same class in the
   batch (0 when there is none). SGD, lr 1e-4, momentum 0.9, weight decay 5e-4, constant lr; the model in train
   mode with every BatchNorm in eval mode (running statistics used and left unchanged).

Read off the reference code, and where it differs from a plain summary of the method:
- The KL is `F.kl_div(log_softmax(student), masked_teacher, "batchmean")`, i.e. KL(masked teacher || student), not
  KL(student || masked teacher).
- The mask zeroes every forget class (all of them, on every image), not only the image's own label.
- The neighbours' weight is tied to the forget images' one: 1 - lambda_1 (0.3), not a separate number.
- The reference applies eps and the step size to the *normalised* tensors its loader yields (CIFAR-10 normalised
  with ImageNet's std, so eps 0.03 is about 0.007 in [0, 1] pixel units). `pixel_values` here are normalised too,
  so eps and the step are used as they are, with no conversion by the model's std.
- The reference then clamps the normalised neighbours to [0, 1], which sets every below-mean pixel to 0 and moves
  it far outside the eps ball (a pixel-space clamp applied in the wrong space). We do not clamp: neighbours stay
  within eps of their image (at most ~0.007 pixel units outside the valid range at the image's extremes).
- The reference *adds* the sign of the gradient of CE(runner-up), which pushes the neighbour away from the runner-up
  and deeper into the forget class, whereas the paper defines the neighbourhood as the perturbed forget images at or
  across the boundary with the runner-up. We step down that gradient (toward the runner-up) by default;
  `pgd_toward_runner_up=False` gives the reference code's sign.
- The neighbours are paired with forget batches by position: the forget loader is reshuffled every epoch while the
  neighbours keep one fixed order, as in the reference (each term is computed on its own batch, so the pairing only
  decides which batches share an optimizer step).
- The features are read in the same forward pass as the logits (the input of the classifier head, which is what
  `penultimate_features` returns); the reference runs the backbone a second time, which gives the same features with
  BatchNorm in eval mode and no dropout.
"""

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset, TensorDataset

from hf_pbu.evidence.features import model_device
from hf_pbu.models import classifier_head, classifier_logits, eval_mode

from ._common import labels_of, loader

DATA_NEEDED = "forget only"
REFERENCE = "Ha, Park, Yoon, arXiv 2506.01318 (Spotter)"


@dataclass
class SpotterConfig:
    forget_weight: float = 0.7  # lambda_1: the forget images' KL; the neighbours' KL gets 1 - lambda_1
    dispersion_weight: float = 1.0  # lambda_2
    epsilon: float = 0.03  # L-inf radius, in the units of the normalised pixel_values (as in the reference)
    pgd_step_size: float = 0.01
    pgd_steps: int = 3
    neighbours_per_image: int = 1
    pgd_toward_runner_up: bool = True  # False: the reference code's sign (away from the runner-up)
    epochs: int = 10
    learning_rate: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    seed: int = 0


def masked_teacher_probs(teacher_logits: torch.Tensor, forget_classes: torch.Tensor) -> torch.Tensor:
    """The teacher's softmax with the forget classes zeroed and the rest renormalised: what the retained classes
    would have received had the forget classes never been an option."""
    probs = F.softmax(teacher_logits.float(), dim=-1).index_fill(1, forget_classes.to(teacher_logits.device), 0.0)
    return probs / (probs.sum(dim=-1, keepdim=True) + 1e-10)


def masked_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, forget_classes: torch.Tensor) -> torch.Tensor:
    """KL(masked teacher || student), averaged over the batch (the reference's `F.kl_div(..., "batchmean")`)."""
    target = masked_teacher_probs(teacher_logits, forget_classes)
    return F.kl_div(F.log_softmax(student_logits.float(), dim=-1), target, reduction="batchmean")


def dispersion(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over ordered pairs (i != j) of same-class rows; minimising it scatters a class's
    embeddings so that a few images no longer give a prototype that restores the class. 0 without any pair."""
    normalised = F.normalize(features.float(), dim=1)
    similarity = normalised @ normalised.T
    pairs = labels[:, None] == labels[None, :]
    pairs.fill_diagonal_(False)
    return similarity[pairs].sum() / pairs.sum().clamp(min=1)


def runner_up(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The highest-scoring class other than the true label (the reference's top-1-unless-it-is-the-label rule)."""
    return logits.scatter(1, labels[:, None], float("-inf")).argmax(dim=1)


def pgd_neighbours(
    teacher: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: SpotterConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """PGD perturbations of `images` within `epsilon` (L-inf) that move the teacher toward each image's runner-up
    class: forget images pushed to the boundary they share with a retained class, where over-unlearning shows."""
    with torch.no_grad():
        targets = runner_up(classifier_logits(teacher, images).float(), labels)
    images = images.repeat_interleave(config.neighbours_per_image, dim=0)
    targets = targets.repeat_interleave(config.neighbours_per_image, dim=0)
    noise = torch.rand(images.shape, generator=generator).to(images) * 2 - 1
    adversarial = images + config.epsilon * noise
    sign = -1.0 if config.pgd_toward_runner_up else 1.0
    for _ in range(config.pgd_steps):
        adversarial.requires_grad_(True)
        loss = F.cross_entropy(classifier_logits(teacher, adversarial).float(), targets)
        (gradient,) = torch.autograd.grad(loss, adversarial)
        with torch.no_grad():
            adversarial = adversarial + sign * config.pgd_step_size * gradient.sign()
            adversarial = torch.minimum(torch.maximum(adversarial, images - config.epsilon), images + config.epsilon)
    return adversarial.detach()


def neighbour_dataset(teacher: nn.Module, forget_train: Dataset, config: SpotterConfig) -> TensorDataset:
    """Every forget image's neighbours, made once from the original model (as the reference does before training)."""
    device = model_device(teacher)
    generator = torch.Generator().manual_seed(config.seed)
    neighbours = []
    with eval_mode(teacher):
        for batch in loader(forget_train, config.batch_size, config.seed):
            images, labels = batch["pixel_values"].to(device), batch["labels"].to(device)
            neighbours.append(pgd_neighbours(teacher, images, labels, config, generator).cpu())
    return TensorDataset(torch.cat(neighbours))


def logits_and_features(model: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the classifier head's input from one forward pass, with gradients (`penultimate_features` gives the
    same features but under no_grad and in eval mode, which the dispersion term cannot use)."""
    captured: list[torch.Tensor] = []
    hook = classifier_head(model).register_forward_hook(lambda module, args, output: captured.append(args[0]))
    try:
        logits = classifier_logits(model, pixel_values)
    finally:
        hook.remove()
    if not captured:
        raise RuntimeError(f"The classifier head of {type(model).__name__} was not called in its forward pass.")
    return logits, captured[-1].flatten(1)


@contextmanager
def train_mode_with_frozen_batchnorm(model: nn.Module) -> Iterator[nn.Module]:
    """Train mode except for BatchNorm (running statistics, left unchanged: the forget batches hold one class, whose
    statistics would shift every retained class), then every submodule's own flag back."""
    modes = [(module, module.training) for module in model.modules()]
    model.train()
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def unlearn(model: nn.Module, forget_train: Dataset, retain_train: Dataset | None, config: SpotterConfig) -> nn.Module:
    del retain_train  # Spotter uses the forget data only
    device = model_device(model)
    forget_classes = torch.as_tensor(np.unique(labels_of(forget_train)), device=device)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    neighbours = neighbour_dataset(teacher, forget_train, config)
    torch.manual_seed(config.seed)  # dropout, where the model has any
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay,
    )
    with train_mode_with_frozen_batchnorm(model):
        for epoch in range(config.epochs):
            forget_batches = loader(forget_train, config.batch_size, config.seed + epoch)
            # One fixed order; with several neighbours per image, zip stops at the last forget batch (as the reference).
            neighbour_batches = DataLoader(neighbours, batch_size=config.batch_size, shuffle=False)
            for batch, (neighbour_images,) in zip(forget_batches, neighbour_batches):
                images, labels = batch["pixel_values"].to(device), batch["labels"].to(device)
                neighbour_images = neighbour_images.to(device)
                with torch.no_grad():
                    teacher_logits = classifier_logits(teacher, images)
                    neighbour_teacher_logits = classifier_logits(teacher, neighbour_images)
                logits, features = logits_and_features(model, images)
                loss = (
                    config.forget_weight * masked_kl(logits, teacher_logits, forget_classes)
                    + (1 - config.forget_weight)
                    * masked_kl(classifier_logits(model, neighbour_images), neighbour_teacher_logits, forget_classes)
                    + config.dispersion_weight * dispersion(features, labels)
                )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return model
