"""When a run ends, and whether it forgot: the stop rules, their progress, and the verdict.

Each rule is described here once (`STOP_RULES`): the `stop_rule` help, the log, the card's hyperparameter row and the
card's sentence on how the run ended all read these descriptions.

- 'forget_accuracy' stops once the accuracy on the whole forget set is at or below `stop_forget_accuracy`. The
  negative cross-entropy is unbounded: once the class is gone, every further step only erodes the retained classes,
  so the stop must come at the first step where it is gone.
- 'ranked_last' stops once the forgotten classes rank last on all but `stop_forget_accuracy` percent of the forget
  images, as in a model retrained without them: the rule of the levels that refit the forget rows ('head',
  'features'), whose rank-last term is zero from there on.
- 'plateau' (for bounded forget terms, whose optimum is a real one) stops once the objective has converged.

Evaluating the forget set after every step would cost more than the step itself. The two threshold rules read a free
signal first: the share of the step's own training batches that the rule still counts (images recognised, or images
on which a forgotten class is not last), read off the logits `compute_loss` computes anyway, summed over processes and
scored by exactly the weights the optimizer is about to update. So the check runs just before the optimizer step:
when that share is at or below `stop_trigger_accuracy`, those weights are evaluated on the whole forget set (eval mode,
the run's mixed precision); if they pass, the step's update is undone after the optimizer has run and training stops,
with the weights that passed. A failed evaluation is repeated no sooner than 1, 2, 4, ... steps later, so a class
whose last images resist does not cost an evaluation every step. Every process gets the same figures, so all stop
together.

A run succeeds only if it forgot (`is_forgotten`): its forget-train accuracy at the end is at or below
`stop_forget_accuracy`, whatever rule ended it. Anything else is a failed run: the results say `forgotten: false`,
the card says so, the command line exits non-zero and does not push (`not_forgotten_message` names what to change).
"""

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.utils import logging

if TYPE_CHECKING:
    from .config import PBUConfig
    from .trainer import PBUTrainer

logger = logging.get_logger(__name__)


@dataclass(frozen=True)
class StopRule:
    """One stop rule, described once: `summary` for the help text; `target(config)`, `ended(step, config)` and
    `ran_out(steps, config)` for the card and the log, with the run's own numbers; `signal`, for the threshold rules,
    what the cheap per-step signal counts."""

    name: str
    summary: str
    target: Callable[["PBUConfig"], str]
    ended: Callable[[int, "PBUConfig"], str]
    ran_out: Callable[[int, "PBUConfig"], str]
    signal: str | None = None

    @property
    def threshold(self) -> bool:
        return self.signal is not None

    def criterion(self, config: "PBUConfig") -> str:
        """The rule with the run's numbers, and when it is checked."""
        if not self.threshold:
            return self.target(config)
        return (f"{self.target(config)}, checked on the whole forget set when a step's training batches have at most "
                f"{config.stop_trigger_accuracy:g}% {self.signal}; the run ends with the weights that passed")


STOP_RULES: dict[str, StopRule] = {rule.name: rule for rule in (
    StopRule(
        "forget_accuracy",
        summary="stop once the accuracy on the whole forget set is at or below `stop_forget_accuracy` (right for the "
        "unbounded 'neg_ce', whose further steps only cost the retained classes)",
        target=lambda c: f"forget-train accuracy <= {c.stop_forget_accuracy:g}%",
        ended=lambda step, c: (f"The stop criterion was met at step {step}: the forget-train accuracy reached "
                               f"{c.stop_forget_accuracy:g}% or less."),
        ran_out=lambda steps, c: (f"The stop criterion (forget-train accuracy <= {c.stop_forget_accuracy:g}%) was "
                                  f"**not** met within the {steps} steps of the step budget."),
        signal="of images still recognised",
    ),
    StopRule(
        "ranked_last",
        summary="stop once the forgotten classes rank last on all but `stop_forget_accuracy` percent of the forget "
        "images, as in a model retrained without them (the levels that refit the forget rows: 'head', 'features')",
        target=lambda c: f"the forgotten classes last on all but {c.stop_forget_accuracy:g}% of the forget set",
        ended=lambda step, c: (f"The stop criterion was met at step {step}: the forgotten classes ranked last on all "
                               f"but {c.stop_forget_accuracy:g}% of their training images."),
        ran_out=lambda steps, c: (f"The stop criterion (the forgotten classes last on all but "
                                  f"{c.stop_forget_accuracy:g}% of their training images) was **not** met within the "
                                  f"{steps} steps of the step budget."),
        signal="of images on which they are not last",
    ),
    StopRule(
        "plateau",
        summary="stop once the objective (the forget term's mean over an epoch plus the anchor penalty at its end) has "
        "not fallen by `stop_plateau_tolerance` for `stop_plateau_patience` epochs in a row (for bounded terms, whose "
        "optimum is a real one)",
        target=lambda c: (f"plateau: the objective (the forget term's mean over an epoch plus the anchor penalty) "
                          f"fell by less than {c.stop_plateau_tolerance:g} (relative) for {c.stop_plateau_patience} "
                          "epochs in a row"),
        ended=lambda step, c: f"The objective stopped falling at step {step}, where the run ended.",
        ran_out=lambda steps, c: f"The objective was still falling when the {steps} steps of the step budget ran out.",
    ),
)}


def stop_outcome(config: "PBUConfig", stopped_at_step: int | None, steps: int) -> str:
    """How the run ended, in one sentence for the card."""
    rule = STOP_RULES[config.resolved_stop_rule]
    return rule.ended(stopped_at_step, config) if stopped_at_step is not None else rule.ran_out(steps, config)


def is_forgotten(forget_train_accuracy: float | None, config: "PBUConfig") -> bool | None:
    """Forgotten when the forget-train accuracy is at or below `stop_forget_accuracy`; None when not measured."""
    if forget_train_accuracy is None:
        return None
    return forget_train_accuracy <= config.stop_forget_accuracy


def not_forgotten_message(forget_train_accuracy: float, steps: int, budget: int, stopped_at_step: int | None,
                          config: "PBUConfig") -> str:
    """What happened and the flag to change: the step budget ran out (raise `--max_steps`), or the objective settled
    with the class still recognised (raise `--alpha`). (A non-finite loss is an error of its own, `hf_pbu.failures`.)"""
    what = (f"Not forgotten: the forget-train accuracy is {forget_train_accuracy:.2f}% after {steps} optimizer steps, "
            f"above stop_forget_accuracy={config.stop_forget_accuracy:g}%.")
    if stopped_at_step is None:
        fix = (f"the step budget ({budget} steps) ran out first; rerun with --max_steps {2 * max(budget, 1)} "
               "(or more --num_train_epochs)")
    elif config.resolved_stop_rule == "plateau":
        fix = (f"the objective stopped falling with the class still recognised; raise --alpha (the forget term's "
               f"weight, now {config.alpha:g}) and rerun")
    else:
        fix = f"raise --alpha (now {config.alpha:g}) or --learning_rate (now {config.learning_rate:g}) and rerun"
    # A finished run's folder is not resumed (`hf_pbu.cli.preflight.check_not_finished`): the rerun needs its own.
    return f"{what} The run ended because {fix} with a new --output_dir (this run's folder is complete)."


@dataclass
class StopState:
    """The stop rules' progress, saved in every checkpoint and restored on resume, so that a resumed run stops at the
    step an uninterrupted one would; and what the run's end measured."""

    failed_checks: int = 0
    next_check_step: int = 0
    plateau_sums: list[float] = field(default_factory=lambda: [0.0, 0.0])  # (forget loss x images, images) of a window
    best_objective: float = math.inf
    stale_windows: int = 0
    plateau_history: list[float] = field(default_factory=list)  # the plateau rule's objective, one per epoch
    forget_train_accuracy_history: list[tuple[int, float]] = field(default_factory=list)  # (step, %) of each check
    stop_check_seconds: float = 0.0
    stopped_at_step: int | None = None  # the step at which a rule ended the run
    batch_signal: float | None = None  # the last step's cheap signal (%), as the threshold rules read it

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> "StopState":
        known = {f.name for f in dataclasses.fields(cls)}
        state = cls(**{key: value for key, value in saved.items() if key in known})
        state.forget_train_accuracy_history = [tuple(item) for item in state.forget_train_accuracy_history]
        return state


class ForgetStopCallback(TrainerCallback, ExportableState):
    """Ends the run by the trainer's stop rule (`PBUConfig.stop_rule`, described in `STOP_RULES`), keeping its
    progress in `trainer.stop_state`; saved in each checkpoint (`state`) and restored on resume (`restore`)."""

    def __init__(self, trainer: "PBUTrainer"):
        self.trainer = trainer
        self.rule = STOP_RULES[trainer.args.resolved_stop_rule]
        self.step_counts = (0.0, 0.0, 0.0)  # (held, seen, loss summed over images) of the current step
        self.passed_weights: list[torch.Tensor] | None = None  # the weights that passed, restored after the update

    @property
    def stop(self) -> StopState:
        return self.trainer.stop_state

    def on_pre_optimizer_step(self, args: "PBUConfig", state, control, **kwargs):
        self.step_counts = self.trainer.pop_step_counts()
        held, seen, _ = self.step_counts
        if not self.rule.threshold or seen == 0:
            return
        self.stop.batch_signal = 100.0 * held / seen
        if self.stop.batch_signal > args.stop_trigger_accuracy or state.global_step < self.stop.next_check_step:
            return
        if self._confirm(args, state, control):
            model = self.trainer.unwrapped()
            self.passed_weights = [p.detach().clone() for p in model.parameters()]
        else:
            self.stop.failed_checks += 1
            self.stop.next_check_step = state.global_step + 2 ** (self.stop.failed_checks - 1)

    @torch.no_grad()
    def on_optimizer_step(self, args: "PBUConfig", state, control, **kwargs):
        if self.passed_weights is not None:
            model = self.trainer.unwrapped()
            torch._foreach_copy_(list(model.parameters()), self.passed_weights)
            self.passed_weights = None

    def on_step_end(self, args: "PBUConfig", state, control, **kwargs):
        if self.rule.name == "plateau":
            start = time.perf_counter()
            _, seen, loss_sum = self.step_counts
            ends = self._plateau_reached(args, seen, loss_sum)
            self.stop.stop_check_seconds += time.perf_counter() - start
            if ends:
                self._confirm(args, state, control)

    def _plateau_reached(self, args: "PBUConfig", seen: float, loss_sum: float) -> bool:
        stop = self.stop
        stop.plateau_sums[0] += loss_sum
        stop.plateau_sums[1] += seen
        if stop.plateau_sums[1] < len(self.trainer.train_dataset):
            return False
        trainer = self.trainer
        penalty = trainer.penalty.value(trainer.unwrapped())[0].item()
        objective = stop.plateau_sums[0] / stop.plateau_sums[1] + penalty
        stop.plateau_history.append(objective)
        stop.plateau_sums = [0.0, 0.0]
        progress = stop.best_objective - objective
        if not math.isfinite(stop.best_objective) or progress > args.stop_plateau_tolerance * abs(stop.best_objective):
            stop.best_objective, stop.stale_windows = objective, 0
        else:
            stop.stale_windows += 1
        return stop.stale_windows >= args.stop_plateau_patience

    def _confirm(self, args: "PBUConfig", state, control) -> bool:
        """Evaluate the whole forget set with the current weights, end the run by the rule; whether it ended."""
        if torch.accelerator.is_available():
            torch.accelerator.synchronize()  # the step's queued kernels belong to the step's time, not the check's
        start = time.perf_counter()
        measured = self.trainer.measure_forget_train()
        forget_accuracy, not_last = measured.accuracy, measured.not_last
        self.stop.stop_check_seconds += time.perf_counter() - start
        self.stop.forget_train_accuracy_history.append((state.global_step, forget_accuracy))
        still = not_last if self.rule.name == "ranked_last" else forget_accuracy
        if self.rule.threshold and still > args.stop_forget_accuracy:
            logger.info(f"After {state.global_step} updates the stop criterion is not met yet "
                        f"({self.rule.target(args)}; forget accuracy {forget_accuracy:.2f}%"
                        + (f", not last on {not_last:.2f}%" if not_last is not None else "") + "): carrying on.")
            return False
        logger.info(f"{self.rule.ended(state.global_step, args)} Forget accuracy {forget_accuracy:.2f}%; stopping "
                    "with these weights.")
        self.stop.stopped_at_step = state.global_step
        self.trainer.final_forget_train = measured  # these weights are the ones the run ends with
        control.should_training_stop = True
        return True

    def state(self) -> dict:
        """The stop rules' progress and the run's time so far, for a checkpoint's trainer_state.json."""
        saved = self.stop.to_dict()
        saved["unlearn_seconds"] = self.trainer.unlearn_seconds_so_far()
        return {"args": {}, "attributes": saved}

    def restore(self, attributes: dict) -> None:
        """Carry on from a checkpoint's `state()`."""
        self.trainer.stop_state = StopState.from_dict(attributes)
        self.trainer.resumed_seconds = attributes["unlearn_seconds"]

    def on_train_end(self, args, state, control, **kwargs):
        if self.stop.stopped_at_step is None:
            logger.info(f"The step budget ({state.max_steps} steps) ran out before the stop criterion "
                        f"({self.rule.target(args)}).")
