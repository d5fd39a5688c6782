"""The reference the fast Fisher is checked against: a brute-force loop, one image and one class at a time, plain
autograd (run it in float64)."""

from collections.abc import Callable, Sequence

import torch
from torch import nn


def brute_force_fisher(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    classes_of: Callable[[torch.Tensor], Sequence[int]] | None = None,
) -> dict[str, torch.Tensor]:
    """mean over images of sum_c p_c (d log p_c / d theta)^2 over `classes_of(probs)` (default: every class), or,
    with `labels`, of the true label's score squared (the empirical Fisher). Parameters that need no gradient are
    left out."""
    model.eval()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    total = {n: torch.zeros_like(p) for n, p in named}
    for i, image in enumerate(images):
        log_probs = model(image[None]).log_softmax(-1)[0]
        probs = log_probs.exp().detach()
        if labels is not None:
            classes = [int(labels[i])]
        else:
            classes = range(len(probs)) if classes_of is None else classes_of(probs)
        for c in classes:
            grads = torch.autograd.grad(log_probs[c], [p for _, p in named], retain_graph=True)
            weight = 1.0 if labels is not None else probs[c]
            for (n, _), g in zip(named, grads):
                total[n] += weight * g.pow(2)
    return {n: t / len(images) for n, t in total.items()}


def max_rel_error(result: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """The largest error of any parameter's Fisher, relative to that parameter's largest reference value."""
    return max(((result[n].double() - reference[n]).abs().max() / reference[n].abs().max()).item() for n in reference)
