"""The ranges of `PBUConfig`'s numbers, checked when the arguments are built, before any work.

NaN passes every comparison, so a bare `alpha < 0` lets `--alpha nan` through to a run that saves the original
weights; each rule here requires a finite number of the right kind first. A learning rate of 0 or an empty step
budget would leave the weights as they were, so they are refused as well. One message each, naming the flag.
"""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """A number of the right kind in an interval; `None` allowed when `optional`."""

    above: float | None = None  # strictly greater than
    at_least: float | None = None
    below: float | None = None  # strictly less than
    at_most: float | None = None
    integer: bool = False
    optional: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        bounds = [f"{symbol} {value:g}" for symbol, value in
                  ((">", self.above), (">=", self.at_least), ("<", self.below), ("<=", self.at_most))
                  if value is not None]
        return f"{kind} {' and '.join(bounds)}".strip() + (", or None" if self.optional else "")

    def accepts(self, value) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            return False
        return (
            math.isfinite(value)
            and (self.above is None or value > self.above)
            and (self.at_least is None or value >= self.at_least)
            and (self.below is None or value < self.below)
            and (self.at_most is None or value <= self.at_most)
        )


POSITIVE = Rule(above=0)
NON_NEGATIVE = Rule(at_least=0)
COUNT = Rule(at_least=1, integer=True)
PERCENT = Rule(at_least=0, at_most=100)
# Every numeric argument of a PBU run (`PBUConfig` and the `TrainingArguments` fields it uses).
RULES: dict[str, Rule] = {
    "alpha": POSITIVE,  # the forget term's weight: with 0 nothing pushes the model away from theta*
    "beta": NON_NEGATIVE,
    "gamma": NON_NEGATIVE,
    "npo_tau": POSITIVE,
    "distill_weight": NON_NEGATIVE,
    "forget_row_learning_rate": POSITIVE,
    "fisher_exact_max_classes": Rule(at_least=0, integer=True),
    "fisher_mc_samples": COUNT,
    "fisher_max_samples": Rule(at_least=1, integer=True, optional=True),
    "fisher_top_mass": Rule(above=0, at_most=1, optional=True),
    "fisher_batch_size": COUNT,
    "fisher_memory_budget": Rule(at_least=1, integer=True, optional=True),
    "stop_forget_accuracy": Rule(at_most=100),  # below 0: never stop early
    "stop_trigger_accuracy": PERCENT,
    "stop_plateau_tolerance": NON_NEGATIVE,
    "stop_plateau_patience": COUNT,
    "retained_drop_warning": PERCENT,
    "learning_rate": POSITIVE,
    "per_device_train_batch_size": COUNT,
    "per_device_eval_batch_size": COUNT,
    "gradient_accumulation_steps": COUNT,
    "num_train_epochs": NON_NEGATIVE,
    "max_steps": Rule(integer=True),  # and -1 (unset) or >= 1: `check_numeric_arguments`
    "warmup_steps": NON_NEGATIVE,
    "weight_decay": NON_NEGATIVE,
    "adam_beta1": Rule(at_least=0, below=1),
    "adam_beta2": Rule(at_least=0, below=1),
    "adam_epsilon": POSITIVE,
    "max_grad_norm": NON_NEGATIVE,
    "logging_steps": POSITIVE,
    "save_steps": POSITIVE,
    "save_total_limit": Rule(at_least=0, integer=True, optional=True),
    "seed": Rule(integer=True),
    "dataloader_num_workers": Rule(at_least=0, integer=True),
    "ddp_timeout": COUNT,
}


# The numbers of the command line's `DataArguments`.
DATA_RULES: dict[str, Rule] = {
    "eval_holdout_fraction": Rule(at_least=0, below=1),
    "mia_samples": Rule(at_least=0, integer=True),
}


def check_numbers(arguments, rules: dict[str, Rule]) -> None:
    """Raise `ValueError` naming the first flag of `arguments` whose value breaks its rule."""
    for name, rule in rules.items():
        value = getattr(arguments, name)
        if not rule.accepts(value):
            raise ValueError(f"--{name} must be {rule.describe()}; got {value!r}.")


def check_numeric_arguments(config) -> None:
    """Raise `ValueError` naming the first flag of `config` (a `PBUConfig`) whose value is out of range, or a step
    budget of nothing (`max_steps` 0 or below -1, or `num_train_epochs` 0 with no `max_steps`). `max_steps` -1 is
    `TrainingArguments`' "unset": the budget then comes from `num_train_epochs` (`PBUConfig.step_budget`)."""
    check_numbers(config, RULES)
    if config.max_steps == 0 or config.max_steps < -1:
        raise ValueError(f"--max_steps must be a number of optimizer steps >= 1, or -1 for the default budget "
                         f"(--num_train_epochs, at least --min_step_budget); got {config.max_steps}.")
    if config.max_steps <= 0 and config.num_train_epochs == 0:
        raise ValueError("--num_train_epochs must be > 0 when --max_steps is not set: a step budget of 0 would save "
                         "the original weights as the unlearned model.")
