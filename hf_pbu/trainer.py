"""`PBUTrainer`: Partially Blinded Unlearning as a `transformers.Trainer` that trains on the forget data only."""

from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import TrainOutput
from transformers.utils import logging

from .config import PBUConfig
from .distributed import shard
from .fisher import default_fisher_cache_dir, load_or_compute_fisher
from .metrics import accuracy
from .models import classifier_logits
from .penalty import AnchorPenalty

logger = logging.get_logger(__name__)


class NonFiniteLossError(RuntimeError):
    """The PBU loss became NaN or infinite; raised before the optimizer could apply it."""


class ForgetStopCallback(TrainerCallback):
    """Stops training once the accuracy on the forget data is at or below `args.stop_forget_accuracy`.

    The negative cross-entropy is unbounded: once the forget class is gone, further steps only erode the retained
    classes. The check runs at the start and every `args.stop_check_steps` optimizer steps on a fixed subset of at
    most `args.stop_check_max_samples` forget images (cheap); once the subset passes, the whole forget set must pass
    too, so a large forget set is not declared gone on a lucky sample.
    """

    def __init__(self, trainer: "PBUTrainer"):
        self.trainer = trainer

    def _check(self, args: PBUConfig, state, control) -> None:
        forget_accuracy = self.trainer.forget_accuracy()
        if forget_accuracy <= args.stop_forget_accuracy and self.trainer.stop_check_is_subset:
            forget_accuracy = self.trainer.forget_accuracy(full=True)
        self.trainer.forget_accuracy_history.append((state.global_step, forget_accuracy))
        if forget_accuracy <= args.stop_forget_accuracy:
            self.trainer.stopped_at_step = state.global_step
            logger.info(
                f"Forget accuracy {forget_accuracy:.2f}% <= {args.stop_forget_accuracy}% at step "
                f"{state.global_step}: the forget class is gone, stopping."
            )
            control.should_training_stop = True

    def on_train_begin(self, args, state, control, **kwargs):
        self._check(args, state, control)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % args.stop_check_steps == 0:
            self._check(args, state, control)

    def on_train_end(self, args, state, control, **kwargs):
        if self.trainer.stopped_at_step is None:
            logger.warning(
                f"Training ended after {state.global_step} steps without reaching the stop criterion "
                f"(forget accuracy <= {args.stop_forget_accuracy}%): raise `num_train_epochs`, `alpha` or "
                "`learning_rate`."
            )


class PBUTrainer(Trainer):
    """Unlearns the classes of `train_dataset` (the forget set S_n, the only data PBU sees) by minimising

        alpha * (-CE) + sum_i (beta * F_i + gamma) * (theta_i - theta*_i)^2

    theta* is the model as passed in; F is its diagonal Fisher on the forget set, computed at init (or read from
    `args.fisher_cache_dir`, or given as `fisher`). Training stops by itself once the forget class is gone.
    """

    def __init__(
        self,
        model: nn.Module,
        args: PBUConfig,
        train_dataset: Dataset,
        fisher: dict[str, torch.Tensor] | None = None,
        **kwargs,
    ):
        if not isinstance(args, PBUConfig):
            raise TypeError("PBUTrainer needs a `PBUConfig` as `args`.")
        if train_dataset is None or len(train_dataset) == 0:
            raise ValueError("PBU trains on the forget data alone, and the forget set is empty.")
        super().__init__(model=model, args=args, train_dataset=train_dataset, **kwargs)
        self.loss_is_scaled_for_ga = False  # the loss is a per-batch mean: let Trainer divide by the GA steps
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self.stopped_at_step: int | None = None
        self.forget_accuracy_history: list[tuple[int, float]] = []  # (step, percent), from the stop checks
        self.fisher_seconds = 0.0
        if fisher is None:
            fisher, self.fisher_seconds = self._fisher()
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError(
                "PBUTrainer adds the anchor penalty's gradient to each parameter's `.grad`, which DeepSpeed and FSDP "
                "shard: run it with DDP (`accelerate launch --multi_gpu`) or on one device."
            )
        self.penalty = AnchorPenalty(self.model, fisher, args.beta, args.gamma)
        self._norm_layers = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        subset = self._subset(train_dataset, args.stop_check_max_samples, args.seed)
        self.stop_check_is_subset = len(subset) < len(train_dataset)
        # Checked after every step: its images are transformed once and kept in memory.
        self._stop_check_dataset = [subset[i] for i in range(len(subset))]
        self.add_callback(ForgetStopCallback(self))

    @staticmethod
    def _subset(dataset: Dataset, max_samples: int, seed: int) -> Dataset:
        if len(dataset) <= max_samples:
            return dataset
        indices = np.random.default_rng(seed).choice(len(dataset), max_samples, replace=False)
        return Subset(dataset, sorted(indices.tolist()))

    def _loader(self, dataset: Dataset, batch_size: int) -> DataLoader:
        return DataLoader(
            shard(dataset),
            batch_size=batch_size,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
        )

    def _fisher(self) -> tuple[dict[str, torch.Tensor], float]:
        args = self.args
        cache_dir = args.fisher_cache_dir or default_fisher_cache_dir()
        return load_or_compute_fisher(
            self.model,
            self.train_dataset,
            lambda: self._loader(self.train_dataset, args.fisher_batch_size),
            cache_dir=None if cache_dir.lower() == "none" else cache_dir,
            estimator=args.fisher_estimator,
            mc_samples=args.fisher_mc_samples,
            seed=args.seed,
            top_mass=args.fisher_top_mass,
        )

    def forget_accuracy(self, full: bool = False) -> float:
        """Accuracy (percent) on the fixed stop-check subset of the forget training data (all of it if `full`),
        in eval mode."""
        return accuracy(
            self.model,
            self.train_dataset if full else self._stop_check_dataset,
            batch_size=self.args.per_device_eval_batch_size,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """alpha * (-CE) on the batch; in training the penalty enters through its gradient alone (`training_step`),
        in evaluation its value is added."""
        if model.training and self.args.freeze_batchnorm:
            for layer in self._norm_layers:
                layer.eval()
        logits = classifier_logits(model, inputs["pixel_values"])
        forget_ce = F.cross_entropy(logits.float(), inputs["labels"])
        loss = -self.args.alpha * forget_ce
        if model.training:
            self._check_finite(loss, forget_ce)
            self._metrics["forget_ce"].append(forget_ce.item())
        else:
            loss = loss + self.penalty.value(self.accelerator.unwrap_model(model))[0]
        return (loss, {"logits": logits}) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """`Trainer.training_step`, then, once per optimizer step (after the last micro-batch's backward and the
        gradients' all-reduce), the penalty's gradient added in place: it is the same on every process."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients:
            scaler = self.accelerator.scaler
            scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
            self.penalty.add_gradient_(self.accelerator.unwrap_model(model), scale)
        return loss

    def _check_finite(self, loss: torch.Tensor, forget_ce: torch.Tensor) -> None:
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item() > 0:
            raise NonFiniteLossError(
                f"The PBU loss became non-finite at step {self.state.global_step} (forget CE {forget_ce.item()}). "
                "Training stopped before applying it, so the model keeps the weights of the last finite step. "
                "Lower `alpha` or `learning_rate`, or tighten `stop_forget_accuracy`."
            )

    def train(self, *args, **kwargs) -> TrainOutput:
        """`Trainer.train`, ending cleanly (last good weights kept) if the loss turns non-finite."""
        try:
            return super().train(*args, **kwargs)
        except NonFiniteLossError as err:
            logger.error(str(err))
            self.stopped_at_step = None
            return TrainOutput(self.state.global_step, float("nan"), {"non_finite_loss": 1.0})

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the penalty terms at the current weights (so `loss` is the PBU objective: the mean of alpha * (-CE)
        since the last log plus the penalty now), the mean forget CE since the last log (averaged over processes)
        and the latest forget accuracy of the stop check."""
        if "loss" in logs:
            weighted, squared = self.penalty.value(self.accelerator.unwrap_model(self.model))
            l2_term = self.args.gamma * squared.item()
            logs.update(
                loss=logs["loss"] + weighted.item(), fisher_penalty=weighted.item() - l2_term, l2_penalty=l2_term
            )
            if self.forget_accuracy_history:
                logs["forget_accuracy"] = self.forget_accuracy_history[-1][1]
        if self._metrics and "loss" in logs:
            names = sorted(self._metrics)
            means = torch.tensor([np.mean(self._metrics[name]) for name in names], device=self.args.device)
            if self.accelerator.num_processes > 1:
                means = self.accelerator.reduce(means, reduction="mean")
            logs.update({name: value.item() for name, value in zip(names, means)})
            self._metrics.clear()
        super().log(logs, start_time)
