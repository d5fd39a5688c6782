"""The forgotten classes' rows of the classifier head, refit so that each forgotten class ranks last on its images.

A model retrained without a class gives that class's head row only negative gradients: the row ends pointing away
from the class's features, its logit far below every other on the class's images (on a Fashion-MNIST oracle, 13.6
below the top retained logit, about level with the lowest). An unlearned model whose row still points at the class
has only hidden it: reset the row's bias and a few fine-tuning steps bring the class back (benchmarks/RESULTS.md,
"Forgotten in the model"). So under `forget_level` "head" or "features" these rows leave the anchor and are refit
by their own term,

    rank_last = mean over images and forget classes f of max(0, z_f - min_{c retained} z_c),

with z the head's logits on the penultimate features of the forget images (the current model's and the original
model's, detached: the rows move, not the features) and each forget class's bias set to the mean of the retained
classes' (the bias an attacker would reset it to), so that the row itself, not its bias, carries the forgetting. The
term is bounded and scale-free: it is exactly 0 once the class ranks last, whatever the scale of the model's logits,
so the rows stop there (a smooth term would let Adam, whose steps keep their size as gradients shrink, drift them on
without end). The biases stay as they were. The rows are leaf tensors of their own, trained in their own optimizer
group at `forget_row_learning_rate` (Adam moves each weight by about its learning rate per step; the rows must travel
far, the rest of the model must not), and written into the head after every optimizer step.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ForgetRows:
    """Trainable copies of the forget classes' weight rows of `linear`, the head's last `nn.Linear`."""

    def __init__(self, linear: nn.Linear, forget_classes: Sequence[int], centre: bool = False):
        self.linear, self.centre = linear, centre
        device = linear.weight.device
        self.classes = torch.as_tensor(sorted(set(int(c) for c in forget_classes)), dtype=torch.long, device=device)
        retained = torch.ones(linear.out_features, dtype=torch.bool, device=device)
        retained[self.classes] = False
        if not retained.any():
            raise ValueError("Forgetting every class of the head leaves no class to rank the forgotten ones below.")
        self.retained = retained
        self.weight = linear.weight.detach()[self.classes].float().clone().requires_grad_(True)

    def rows(self) -> torch.Tensor:
        """The rows the head gets: the trainable copies or, with `centre`, each shifted so that its mean coordinate is
        the retained rows' mean coordinate. Centred, a row cannot lower its class's logit on every input by a uniform
        shift (which, on non-negative features, is the hinge's first way down, and which an attacker undoes without
        any image by re-centring the row): it must turn away from the class's features."""
        if not self.centre:
            return self.weight
        target = self.linear.weight.detach()[self.retained].to(self.weight.dtype).mean()
        return self.weight - self.weight.mean(1, keepdim=True) + target

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The head's logits on `features` with these rows, each forget class's bias set to the retained classes'
        mean (in the rows' dtype, fp32)."""
        dtype = self.weight.dtype
        weight = self.linear.weight.detach().to(dtype).index_put((self.classes,), self.rows())
        logits = F.linear(features.to(dtype), weight)
        if self.linear.bias is not None:
            bias = self.linear.bias.detach().to(dtype)
            logits = logits + bias.index_put((self.classes,), bias[self.retained].mean().expand(len(self.classes)))
        return logits

    def not_last(self, logits: torch.Tensor) -> torch.Tensor:
        """For each row of `logits` (the model's own), whether some forget class is not below every retained one."""
        classes, retained = self.classes.to(logits.device), self.retained.to(logits.device)
        return logits[:, classes].max(-1).values >= logits[:, retained].min(-1).values

    def rank_last(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The term's mean over every row of every tensor of `features` (each [N, D]) and every forget class."""
        terms = []
        for batch in features:
            logits = self.logits(batch.detach())
            lowest_retained = logits[:, self.retained].min(-1, keepdim=True).values
            terms.append(F.relu(logits[:, self.classes] - lowest_retained).reshape(-1))
        return torch.cat(terms).mean()

    @torch.no_grad()
    def write_(self) -> None:
        """Copy the rows into the head (in its dtype)."""
        self.linear.weight[self.classes] = self.rows().to(self.linear.weight.dtype)

    @torch.no_grad()
    def read_(self) -> None:
        """Take the rows from the head (e.g. a resumed checkpoint's)."""
        self.weight.copy_(self.linear.weight[self.classes].float())

    def mask(self) -> torch.Tensor:
        """Where the head's weight holds these rows (True): entries the anchor leaves free."""
        return (~self.retained)[:, None].expand_as(self.linear.weight)


class InputCapture:
    """Keeps the input of the last call of a module (a forward hook): the features a head's last linear reads."""

    def __init__(self, module: nn.Module):
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, output) -> None:
        self.value = args[0]

    def pop(self) -> torch.Tensor:
        value, self.value = self.value, None
        if value is None:
            raise RuntimeError("The classifier head's last nn.Linear was not called in the forward pass.")
        return value

    def remove(self) -> None:
        self.handle.remove()
