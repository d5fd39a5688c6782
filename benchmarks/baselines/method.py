"""The common shape of an unlearning method, so that PBU and every baseline run through the same benchmark code."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn
from torch.utils.data import Dataset

DataNeeded = Literal["forget only", "retain only", "forget + retain"]

# unlearn(model, forget_train, retain_train, config) -> unlearned model (may be `model`, modified in place).
# Datasets yield {"pixel_values", "labels"}; methods whose `data_needed` is "forget only" get retain_train=None.
UnlearnFn = Callable[[nn.Module, Dataset | None, Dataset | None, Any], nn.Module]


@dataclass(frozen=True)
class UnlearningMethod:
    name: str
    unlearn: UnlearnFn
    config_class: type
    data_needed: DataNeeded
    reference: str
    deterministic: bool = False  # the seed changes nothing: the benchmark runs it once, as seed 0

    @property
    def needs_forget(self) -> bool:
        return self.data_needed != "retain only"

    @property
    def needs_retain(self) -> bool:
        return self.data_needed != "forget only"
