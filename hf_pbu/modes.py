"""Temporarily switching a model to eval mode, restoring each submodule's own mode afterwards."""

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode (BatchNorm uses running statistics, dropout is off), then restore.

    Each submodule's flag is restored individually: `model.train(was_training)` would also flip submodules that
    the caller had deliberately frozen in eval mode.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
