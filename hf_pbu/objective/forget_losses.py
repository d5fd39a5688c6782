"""The forget term of PBU's objective, chosen by name (`PBUConfig.forget_loss`).

PBU minimises alpha * forget_term + sum_i (beta * F_i + gamma) * (theta_i - theta*_i)^2 on the forget data alone. The
paper's forget term, `neg_ce` (-CE), is unbounded below: once an image is forgotten its loss keeps falling, and those
steps erode the retained classes (benchmarks/RESULTS.md). The other terms are bounded below by 0 and their
gradient on the forgotten class's logit, d/dz_y = p_y (times a weight), vanishes once the image is forgotten
(p_theta(y|x) -> 0), so extra steps let the anchors pull the weights back instead:

- `npo`: NPO for classifiers (Zhang et al., arXiv 2404.05868), (2/tau) * log(1 + (p_theta(y|x) / p_theta*(y|x))^tau).
  Its whole gradient carries the factor sigmoid(tau * log(p/p*)) -> 0.
- `complement`: -log(1 - p_theta(y|x)): pushes the forget class's probability to 0 and nothing else.
- `relabel`: cross-entropy towards the original model's most likely *retained* class (every forget class excluded),
  as Boundary Shrink (Chen et al., CVPR 2023) without its adversarial step.
- `distill`: KL(q || p_theta) with q the original model's softmax over the retained classes (forget logits masked
  to -inf, as DELETE, Zhou et al., CVPR 2025): forgets the class and keeps the original's ranking of the others.

Terms combine with '+' (e.g. `npo+distill`); `distill` is weighted by `distill_weight`, the others by 1, and alpha
weighs the sum. Each term is a per-image value averaged over the batch.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ForgetBatch:
    """What a forget term sees: fp32 logits of the model being unlearned (with gradient), the labels (forget classes
    only), and, for the terms that need them, the original model's fp32 logits on the same images (no gradient) and
    the ids of every forget class."""

    logits: torch.Tensor
    labels: torch.Tensor
    reference_logits: torch.Tensor | None = None
    forget_classes: torch.Tensor | None = None


def _label_log_prob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logits.log_softmax(-1).gather(-1, labels[:, None]).squeeze(-1)


def _retained_logits(batch: ForgetBatch) -> torch.Tensor:
    """The original model's logits with every forget class set to -inf: its distribution over the retained classes."""
    return batch.reference_logits.index_fill(-1, batch.forget_classes.to(batch.logits.device), float("-inf"))


def neg_ce(batch: ForgetBatch) -> torch.Tensor:
    """-CE(f_theta(x), y): the paper's term, unbounded below."""
    return -F.cross_entropy(batch.logits, batch.labels, reduction="none")


def npo(batch: ForgetBatch, tau: float) -> torch.Tensor:
    """(2/tau) * log(1 + (p/p*)^tau), written as (2/tau) * softplus(tau * (log p - log p*)) for stability."""
    log_ratio = _label_log_prob(batch.logits, batch.labels) - _label_log_prob(batch.reference_logits, batch.labels)
    return 2.0 / tau * F.softplus(tau * log_ratio)


def complement(batch: ForgetBatch) -> torch.Tensor:
    """-log(1 - p_y) = logsumexp(z) - logsumexp(z without z_y): finite even where p_y rounds to 1."""
    others = batch.logits.scatter(-1, batch.labels[:, None], float("-inf"))
    return batch.logits.logsumexp(-1) - others.logsumexp(-1)


def relabel(batch: ForgetBatch) -> torch.Tensor:
    """CE towards the original model's most likely retained class."""
    return F.cross_entropy(batch.logits, _retained_logits(batch).argmax(-1), reduction="none")


def distill(batch: ForgetBatch) -> torch.Tensor:
    """KL(q || p_theta), q the original model's softmax over the retained classes (0 on the forget classes)."""
    log_q = _retained_logits(batch).log_softmax(-1)
    terms = log_q.exp() * (log_q - batch.logits.log_softmax(-1))
    return torch.where(torch.isfinite(log_q), terms, 0.0).sum(-1)


@dataclass(frozen=True)
class Term:
    """One forget term: per-image values, and what it needs besides the logits and labels."""

    per_image: Callable[..., torch.Tensor]
    bounded: bool
    needs_reference: bool
    needs_forget_classes: bool
    summary: str  # for the model card


TERMS: dict[str, Term] = {
    "neg_ce": Term(neg_ce, bounded=False, needs_reference=False, needs_forget_classes=False,
                   summary="-CE(f_theta(x), y) (the paper's)"),
    "npo": Term(npo, bounded=True, needs_reference=True, needs_forget_classes=False,
                summary="NPO, (2/tau) log(1 + (p_theta(y|x) / p_theta*(y|x))^tau)"),
    "complement": Term(complement, bounded=True, needs_reference=False, needs_forget_classes=False,
                       summary="-log(1 - p_theta(y|x))"),
    "relabel": Term(relabel, bounded=True, needs_reference=True, needs_forget_classes=True,
                    summary="cross-entropy towards the original model's most likely retained class"),
    "distill": Term(distill, bounded=True, needs_reference=True, needs_forget_classes=True,
                    summary="KL divergence to the original model's distribution over the retained classes"),
}


@dataclass(frozen=True)
class ForgetLoss:
    """A '+' join of terms with their weights; called on a batch, the batch mean of their weighted sum (alpha apart)."""

    name: str
    terms: tuple[tuple[float, Callable[[ForgetBatch], torch.Tensor]], ...]
    bounded: bool
    needs_reference: bool
    needs_forget_classes: bool
    summary: str

    def __call__(self, batch: ForgetBatch) -> torch.Tensor:
        return sum(weight * term(batch) for weight, term in self.terms).mean()


def build_forget_loss(name: str, *, npo_tau: float | None = None, distill_weight: float | None = None) -> ForgetLoss:
    """The `ForgetLoss` named `name` ('+'-joined names of `TERMS`), with the options of the terms it joins (`npo_tau`
    for 'npo', `distill_weight` for 'distill'; `PBUConfig.build_forget_loss` passes the run's)."""
    parts = name.split("+")
    unknown = [part for part in parts if part not in TERMS]
    if unknown or len(set(parts)) != len(parts):
        raise ValueError(f"forget_loss={name!r}: join distinct terms among {', '.join(TERMS)} with '+' (e.g. "
                         "'complement+distill').")
    for part, option, value in (("npo", "npo_tau", npo_tau), ("distill", "distill_weight", distill_weight)):
        if part in parts and value is None:
            raise ValueError(f"forget_loss={name!r} needs {option}.")
    options = {"npo": {"tau": npo_tau}}
    weights = {"distill": distill_weight}
    chosen = [TERMS[part] for part in parts]
    terms = tuple((weights.get(part, 1.0), partial(TERMS[part].per_image, **options.get(part, {}))) for part in parts)
    summary = " + ".join(f"{weights.get(part, 1.0):g} x {TERMS[part].summary}" if part in weights
                         else TERMS[part].summary for part in parts)
    return ForgetLoss(
        name=name,
        terms=terms,
        summary=summary,
        bounded=all(term.bounded for term in chosen),
        needs_reference=any(term.needs_reference for term in chosen),
        needs_forget_classes=any(term.needs_forget_classes for term in chosen),
    )
