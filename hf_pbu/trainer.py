"""`PBUTrainer`: Partially Blinded Unlearning as a `transformers.Trainer` that trains on the forget data only."""

import copy
import dataclasses
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from timm.models import save_for_hf
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedModel, Trainer, TrainerCallback
from transformers.trainer_utils import TrainOutput
from transformers.utils import logging

from .config import PBUConfig, refuse_sharded_training
from .data import dataset_labels
from .distributed import shard
from .evidence.measurement import accuracy_of, predictions
from .failures import NonFiniteLossError, NonFiniteWeightsError, UnchangedWeightsError
from .io.atomic import remove_work_dir_if_empty, staged_files, write_error, write_failure
from .io.checkpoints import (
    check_resumable,
    checkpoint_to_resume,
    clear_staged_checkpoint,
    publish_checkpoint,
    run_signature,
    staging_folder,
)
from .io.model_card import base_model_of, card_dataset, load_base_card, model_class_names, write_model_card
from .io.publish import push_unlearned_model
from .models import classifier_logits, head_linear, num_classes
from .objective.fisher import FisherRecord, default_fisher_cache_dir, load_or_compute_fisher, memory_budget
from .objective.forget_losses import ForgetBatch
from .objective.forget_rows import ForgetRows, InputCapture
from .objective.penalty import AnchorPenalty
from .results import UnlearningResults
from .sampling import seeded_subset
from .stopping import ForgetStopCallback, StopState, is_forgotten, not_forgotten_message

logger = logging.get_logger(__name__)


NOT_READ = object()  # `PBUTrainer(base_card=...)` not given: the card reads it once, when first needed


@dataclass(frozen=True)
class ForgetTrainMeasure:
    """The whole forget set through the model: its accuracy (%), the share (%) of images on which a forgotten class is
    not last (with refit forget rows; else None), and the logits and labels it was read from."""

    accuracy: float
    not_last: float | None
    logits: torch.Tensor
    labels: torch.Tensor


def enable_activation_checkpointing(model: nn.Module, checkpointing_kwargs: dict | None = None) -> None:
    """Recompute activations in the backward pass instead of keeping them (`--gradient_checkpointing`): timm models
    (also inside transformers' TimmWrapper) by `set_grad_checkpointing`, transformers models by
    `gradient_checkpointing_enable` where they support it; the same arithmetic, so the same weights. Raises
    `ValueError` for a model that has neither."""
    inner = getattr(model, "module", model)
    if isinstance(inner, PreTrainedModel):
        if not inner.supports_gradient_checkpointing:
            raise ValueError(f"--gradient_checkpointing: {type(inner).__name__} does not support gradient "
                             "checkpointing in transformers. Run without it (lower --per_device_train_batch_size and "
                             "raise --gradient_accumulation_steps to save memory).")
        inner.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs=checkpointing_kwargs or {"use_reentrant": False})
        return
    timm_model = getattr(inner, "timm_model", inner)
    if callable(getattr(timm_model, "set_grad_checkpointing", None)):
        timm_model.set_grad_checkpointing(True)
        return
    raise ValueError(f"--gradient_checkpointing: {type(inner).__name__} has neither timm's `set_grad_checkpointing` "
                     "nor transformers' `gradient_checkpointing_enable`. Run without it.")


class ForgetRowsCallback(TrainerCallback):
    """Under forget_level "head" or "features", writes the refit forget rows into the head after every optimizer step
    (before the stop rule may undo the step, which then restores the head as it was)."""

    def __init__(self, trainer: "PBUTrainer"):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.trainer.forget_rows is not None:
            self.trainer.forget_rows.write_()
            self.trainer.forget_rows.weight.grad = None  # not a model parameter: `Trainer` zeroes only the model's


class PBUTrainer(Trainer):
    """Unlearns the classes of `train_dataset` (the forget set S_n, the only data PBU sees) by minimising

        alpha * forget_term + sum_i (beta * F_i + gamma) * (theta_i - theta*_i)^2

    with the forget term `args.forget_loss` (`hf_pbu.objective.forget_losses`; the paper's -CE is `neg_ce`).
    theta* is the model as passed in; F is its diagonal Fisher on the forget set, computed at the start of `train`
    (or read from `args.fisher_cache_dir`, or given as `fisher`), before a checkpoint's weights are loaded; so is the
    frozen reference copy of the model that some bounded terms compare with. Building the trainer is cheap and places
    the model on `args.device`, so the model can be measured there first. Training stops by itself by its stop
    rule (`args.resolved_stop_rule`, `hf_pbu.stopping`), whose progress is `stop_state`.
    `run_metadata` (e.g. model id, revision, forget classes) joins the run's signature, which a checkpoint must match
    to be resumed. `forget_classes`: the ids of every class being forgotten, which the 'relabel' and 'distill' terms
    exclude from the retained classes; by default the labels present in the forget set (one pass over it).

    Publishing follows TRL's trainers: `save_model` writes the model in its source format (timm's Hub layout, or
    transformers' `save_pretrained`), `create_model_card` writes the unlearning card and `unlearning_results.json`,
    and `push_to_hub` does both and uploads the folder once, at the end (no checkpoint is pushed during the run).
    `base_model_id` (the Hub id the model came from; default: read from the model), `base_card` (its model card, read
    once when first needed unless given) and `class_names` feed the card.

    A run succeeds only if it forgot: `unlearning_results.forgotten` says whether the whole forget set's accuracy at
    the end is at or below `args.stop_forget_accuracy` (`hf_pbu.stopping`), and a warning names what to change when
    not.
    """

    def __init__(
        self,
        model: nn.Module,
        args: PBUConfig,
        train_dataset: Dataset,
        fisher: dict[str, torch.Tensor] | None = None,
        run_metadata: dict | None = None,
        forget_classes: list[int] | None = None,
        base_model_id: str | None = None,
        base_card=NOT_READ,
        class_names: list[str] | None = None,
        **kwargs,
    ):
        if not isinstance(args, PBUConfig):
            raise TypeError("PBUTrainer needs a `PBUConfig` as `args`.")
        refuse_sharded_training(args)
        if train_dataset is None or len(train_dataset) == 0:
            raise ValueError("PBU trains on the forget data alone, and the forget set is empty.")
        if args.max_steps <= 0:
            args = dataclasses.replace(args, max_steps=args.step_budget(len(train_dataset)))
            logger.info(
                f"Step budget: {args.max_steps} optimizer steps ({args.num_train_epochs:g} epochs over "
                f"{len(train_dataset)} forget images, counted as for one process, and at least "
                f"{args.min_step_budget}); the stop criterion usually ends the run first."
            )
        if args.activation_checkpointing:  # `--gradient_checkpointing`, or its new name
            enable_activation_checkpointing(model, args.activation_checkpointing_kwargs)
            # Enabled here for either family: `Trainer` would call `gradient_checkpointing_enable`, which timm lacks.
            args = dataclasses.replace(args, activation_checkpointing=False, gradient_checkpointing=False)
        super().__init__(model=model, args=args, train_dataset=train_dataset, **kwargs)
        self.loss_is_scaled_for_ga = False  # the loss is a per-batch mean: let Trainer divide by the GA steps
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._given_fisher = fisher
        self._penalty: AnchorPenalty | None = None
        self.forget_loss = args.build_forget_loss()
        self._reference: nn.Module | None = None
        self.forget_rows: ForgetRows | None = None  # forget_level "head"/"features": the forget classes' head rows
        self._captures: dict[str, InputCapture] = {}  # the features each model's head reads, under those levels
        self._given_forget_classes = forget_classes
        self._forget_classes: torch.Tensor | None = None
        self.fisher_record = FisherRecord()
        self.run_metadata = run_metadata
        self.run_signature: dict | None = None
        self._norm_layers = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self._step_counts = [0.0, 0.0, 0.0]  # (held, seen, loss * images) of the current optimizer step
        self.stop_state = StopState()
        self.final_forget_train: ForgetTrainMeasure | None = None  # the forget set measured with the final weights
        self.resumed_from_step: int | None = None  # the checkpoint's step, when the run resumed one
        self.resumed_seconds = 0.0  # unlearning time before that checkpoint was written
        self._train_start: float | None = None
        self._staging_root: str | None = None  # set while a checkpoint is written (`_save_checkpoint`)
        self.base_model_id = base_model_id
        self._base_card = base_card
        self.class_names = class_names
        self.unlearning_results: UnlearningResults | None = None  # set by `train`
        self.evidence_failure: Exception | None = None  # why the evidence step failed (`hf_pbu.unlearning.unlearn`)
        self.add_callback(ForgetRowsCallback(self))
        self._stop_callback = ForgetStopCallback(self)
        self.add_callback(self._stop_callback)

    def unwrapped(self, model: nn.Module | None = None) -> nn.Module:
        """`model` (default: the trainer's) without its DDP and `torch.compile` wrappers: the module whose parameter
        names the anchor, the Fisher and the forget rows are keyed by (`--torch_compile` prefixes them `_orig_mod.`)."""
        return self.accelerator.unwrap_model(self.model if model is None else model, keep_torch_compile=False)

    @property
    def stop_rule(self) -> str:
        """The stop rule in force (`PBUConfig.resolved_stop_rule`)."""
        return self.args.resolved_stop_rule

    @property
    def penalty(self) -> AnchorPenalty:
        return self.prepare_penalty()

    def prepare_penalty(self) -> AnchorPenalty:
        """theta* and w = beta * F + gamma, built on the first call (the start of `train`, or an evaluation before
        it) from the model as it is then: the source model. With beta = 0 the Fisher weighs nothing and is not
        computed."""
        if self._penalty is None:
            fisher = self._given_fisher
            if fisher is not None:
                self.fisher_record = FisherRecord(source="given")
            elif self.args.beta == 0:
                fisher = {name: torch.zeros_like(p) for name, p in self.model.named_parameters()}
                self.fisher_record = FisherRecord(source="not needed")
            else:
                fisher, self.fisher_record = self._fisher()
            free = None
            if self.args.refits_forget_rows:  # the forget rows are refit, not anchored
                self.prepare_reference()
                linear = self.forget_rows.linear
                name = next(name for name, p in self.model.named_parameters() if p is linear.weight)
                free = {name: self.forget_rows.mask()}
            self._penalty = AnchorPenalty(self.model, fisher, self.args.beta, self.args.gamma, free)
            self._given_fisher = None
        return self._penalty

    def prepare_reference(self) -> None:
        """The frozen copy of the original model and the forget class ids, for the forget terms that need them
        (nothing otherwise): built on the first call (the start of `train`, or an evaluation before it) from the
        model as it is then, the source model. The copy costs the model's memory once more and one forward per step,
        in eval mode and the run's mixed precision (as TRL's `ref_model`)."""
        rows = self.args.refits_forget_rows
        if (self.forget_loss.needs_reference or rows) and self._reference is None:
            self._reference = copy.deepcopy(self.unwrapped()).eval().requires_grad_(False)
        if (self.forget_loss.needs_forget_classes or rows) and self._forget_classes is None:
            classes = self._given_forget_classes or self._labels_of_forget_set()
            self._forget_classes = torch.tensor(sorted(set(classes)), dtype=torch.long, device=self.args.device)
        if rows and self.forget_rows is None:
            linears = {name: head_linear(model) for name, model in (("model", self.accelerator.unwrap_model(
                self.model)), ("reference", self._reference))}
            if linears["model"] is None:
                raise ValueError(f"forget_level={self.args.forget_level!r} refits the forget classes' rows of the "
                                 "classifier head's last nn.Linear, and this model's head has none: use "
                                 "forget_level='output'.")
            self.forget_rows = ForgetRows(linears["model"], self._forget_classes.tolist(),
                                          centre=self.args.forget_row_centring)
            self._reference_linear = linears["reference"]
        if rows and not self._captures:
            self._captures = {"model": InputCapture(self.forget_rows.linear),
                              "reference": InputCapture(self._reference_linear)}

    def _labels_of_forget_set(self) -> list[int]:
        """The labels present in the whole forget set (every process reads all of it, so all agree)."""
        labels = dataset_labels(self.train_dataset, self.args.per_device_eval_batch_size, self.data_collator,
                                self.args.dataloader_num_workers)
        return sorted(set(labels.tolist()))

    def _forget_batch(self, logits: torch.Tensor, inputs: dict) -> ForgetBatch:
        """The forget term's inputs: fp32 logits, labels and, where needed, the reference model's logits."""
        self.prepare_reference()
        reference_logits = None
        if self._reference is not None:
            with torch.no_grad(), self.accelerator.autocast():
                reference_logits = classifier_logits(self._reference, inputs["pixel_values"]).float()
        return ForgetBatch(logits.float(), inputs["labels"], reference_logits, self._forget_classes)

    def _loader(self, dataset: Dataset, batch_size: int) -> DataLoader:
        return DataLoader(
            shard(dataset),
            batch_size=batch_size,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
        )

    def _fisher(self) -> tuple[dict[str, torch.Tensor], FisherRecord]:
        """The Fisher on (a sample of) the forget set within its memory budget (resolved now, from the free
        accelerator memory unless given), and its record: the estimator, the seconds it took and where it came from
        (`load_or_compute_fisher`), the budget and the accelerator's peak memory while it was computed."""
        args = self.args
        cache_dir = args.fisher_cache_dir or default_fisher_cache_dir()
        budget = memory_budget(args.device, args.fisher_memory_budget)
        estimator = args.fisher_estimator_for(num_classes(self.model))
        if args.fisher_estimator == "auto":
            logger.info(f"Fisher estimator: {estimator} (auto, for {num_classes(self.model)} classes)")
        on_accelerator = args.device.type != "cpu"
        if on_accelerator:
            torch.accelerator.reset_peak_memory_stats(args.device)
        forget = seeded_subset(self.train_dataset, args.fisher_max_samples, args.seed)
        fisher, seconds, source = load_or_compute_fisher(
            self.model,
            forget,
            lambda: self._loader(forget, args.fisher_batch_size),
            cache_dir=None if cache_dir.lower() == "none" else cache_dir,
            estimator=estimator,
            mc_samples=args.fisher_mc_samples,
            seed=args.seed,
            top_mass=args.fisher_top_mass,
            memory_budget_bytes=budget,
            autocast=self.accelerator.autocast,  # the run's precision; the sums stay fp32
            show_progress=not args.disable_tqdm,
        )
        peak = torch.accelerator.max_memory_allocated(args.device) if on_accelerator else None
        return fisher, FisherRecord(estimator, seconds, source, budget, peak)

    def measure_forget_train(self) -> "ForgetTrainMeasure":
        """The whole forget training set through the model as it is, in eval mode and the run's mixed precision,
        with `dataloader_num_workers` (each image counted once whatever the number of processes), in one pass."""
        args = self.args
        logits, labels = predictions(self.model, self.train_dataset, args.per_device_eval_batch_size,
                                     self.data_collator, args.dataloader_num_workers, self.accelerator)
        not_last = None
        if self.forget_rows is not None:
            not_last = float(100.0 * self.forget_rows.not_last(logits).double().mean())
        return ForgetTrainMeasure(accuracy_of(logits, labels), not_last, logits, labels)

    def forget_train_accuracy(self) -> float:
        """Accuracy (percent) on the whole forget training set, with the weights as they are now."""
        return self.measure_forget_train().accuracy

    def pop_step_counts(self) -> tuple[float, float, float]:
        """(held, seen, loss summed over images) of the optimizer step just ended, summed over processes; then reset:
        held counts the images the stop rule still counts (recognised, or with a forgotten class not last)."""
        counts, self._step_counts = tuple(self._step_counts), [0.0, 0.0, 0.0]
        return counts

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """alpha * forget_term on the batch; in training the penalty enters through its gradient alone
        (`training_step`), in evaluation its value is added."""
        if model.training and self.args.freeze_batchnorm:
            for layer in self._norm_layers:
                layer.eval()
        logits = classifier_logits(model, inputs["pixel_values"])
        batch = self._forget_batch(logits, inputs)
        rank_last = None
        if self.forget_rows is not None:  # forget_level "head" or "features"
            features, reference_features = self._captures["model"].pop(), self._captures["reference"].pop()
            # The forget rows are refit on the detached features of both models; under "features" the forget term
            # reads the current features through the original head, so that the features must move.
            if self.args.forget_level == "features":
                batch = dataclasses.replace(batch, logits=self._reference_linear(features).float())
            rank_last = self.forget_rows.rank_last([features, reference_features])
        loss = self.args.alpha * self.forget_loss(batch)
        if rank_last is not None:
            loss = loss + rank_last
        if model.training:
            with torch.no_grad():
                forget_ce = F.cross_entropy(logits.float(), inputs["labels"])
            self._check_finite_and_count(loss, forget_ce, logits, inputs["labels"])
            self._metrics["forget_ce"].append(forget_ce.item())
        else:
            loss = loss + self.penalty.value(self.unwrapped(model))[0]
        return (loss, {"logits": logits}) if return_outputs else loss

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """`Trainer`'s optimizer, plus, under forget_level "head" or "features", a group of its own for the forget rows
        (taken from the head now: a resumed checkpoint's) at `forget_row_learning_rate`, without weight decay."""
        optimizer = super().create_optimizer(model)
        rows = self.forget_rows
        if rows is not None and not any(p is rows.weight for group in optimizer.param_groups for p in group["params"]):
            rows.read_()
            optimizer.add_param_group({"params": [rows.weight], "lr": self.args.forget_row_learning_rate,
                                       "weight_decay": 0.0})
        return optimizer

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """`Trainer.training_step`, then, once per optimizer step (after the last micro-batch's backward and the
        gradients' all-reduce), the penalty's gradient added in place: it is the same on every process. The whole
        gradient is then checked to be finite, before the optimizer can apply it (except under fp16's loss scaling,
        whose scaler skips the steps with non-finite gradients itself)."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients and self.forget_rows is not None and self.accelerator.num_processes > 1:
            grad = self.forget_rows.weight.grad  # not a DDP parameter: averaged over processes here
            self.forget_rows.weight.grad = self.accelerator.reduce(grad, reduction="mean")
        if self.accelerator.sync_gradients:
            scaler = self.accelerator.scaler
            scaled = scaler is not None and scaler.is_enabled()
            unwrapped = self.unwrapped(model)
            self.penalty.add_gradient_(unwrapped, scaler.get_scale() if scaled else 1.0)
            if not scaled:
                self._check_finite_gradients(unwrapped)
        return loss

    def _check_finite_gradients(self, model: nn.Module) -> None:
        """Raise if any gradient is NaN or infinite (one reduction; the gradients are all-reduced already, so every
        process decides alike)."""
        named = list(model.named_parameters())
        if self.forget_rows is not None:  # the forget rows' own leaf, outside the model
            named.append(("forget rows", self.forget_rows.weight))
        grads = [p.grad for _, p in named if p.grad is not None]
        if not grads or torch.isfinite(torch.stack(torch._foreach_norm(grads))).all():
            return
        bad = [name for name, p in named if p.grad is not None and not torch.isfinite(p.grad).all()]
        raise NonFiniteLossError(
            f"The gradient of the PBU objective became non-finite at step {self.state.global_step} in {len(bad)} "
            f"parameter(s) ({', '.join(bad[:3])}): the forget term's gradient or the anchor penalty's. Training "
            "stopped before applying it, so the model keeps the weights of the last finite step. Lower `alpha` or "
            "`learning_rate`, and check the model and the forget images."
        )

    def _check_finite_and_count(
        self, loss: torch.Tensor, forget_ce: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor
    ) -> None:
        """Raise if the loss is non-finite on any process; add the batch's held images (recognised; under
        'ranked_last', with a forgotten class not last yet) and loss to the step's counts (the stop rules' signals).
        One reduction of four numbers serves both."""
        if self.stop_rule == "ranked_last":
            held = self.forget_rows.not_last(logits.detach())
        else:
            held = logits.detach().argmax(-1) == labels
        stats = torch.stack([
            (~torch.isfinite(loss.detach())).float(),
            held.sum().float(),
            torch.tensor(float(labels.numel()), device=loss.device),
            loss.detach().float() * labels.numel(),
        ])
        if self.accelerator.num_processes > 1:
            stats = self.accelerator.reduce(stats, reduction="sum")
        bad, held, seen, loss_sum = stats.tolist()
        if bad > 0:
            raise NonFiniteLossError(
                f"The PBU loss became non-finite at step {self.state.global_step} (forget CE {forget_ce.item()}). "
                "Training stopped before applying it, so the model keeps the weights of the last finite step. "
                "Lower `alpha` or `learning_rate`, or tighten `stop_forget_accuracy`."
            )
        self._step_counts[0] += held
        self._step_counts[1] += seen
        self._step_counts[2] += loss_sum

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs) -> TrainOutput:
        """`Trainer.train`, after the run's signature (checked against the checkpoint resumed, if any) and the
        penalty are taken from the source model. `resume_from_checkpoint`: a complete checkpoint's folder, or True
        for the last complete one in `output_dir` (incomplete ones are reported and skipped).

        A run that cannot give an unlearned model raises an `UnlearningFailedError`: `NonFiniteLossError` when the
        loss or its gradient turns non-finite (the model keeps the last finite weights), `NonFiniteWeightsError`
        when weights about to be saved are not finite (never written), `UnchangedWeightsError` when training left
        the weights exactly as they were. The metrics add `fisher_seconds` and `stop_check_seconds` to
        `train_runtime`; `unlearning_results` counts, after a resume, the time before the interruption too."""
        checkpoint = checkpoint_to_resume(resume_from_checkpoint, self.args.output_dir)
        if checkpoint is not None or self.args.save_strategy != "no":
            self.run_signature = run_signature(self.model, self.train_dataset, self.args, self.run_metadata)
        if checkpoint is not None:
            check_resumable(checkpoint, self.run_signature, self.args.output_dir)
        self.prepare_penalty()  # from the source model, before a checkpoint's weights are loaded
        self.prepare_reference()
        self._train_start = time.perf_counter()
        self.final_forget_train = None
        try:
            output = super().train(resume_from_checkpoint=checkpoint, **kwargs)
        except (NonFiniteLossError, NonFiniteWeightsError):
            self._keep_finite_weights()
            self.stop_state.stopped_at_step = None
            raise
        finally:  # the trained model leaves without the feature hooks of forget_level "head"/"features"
            for capture in self._captures.values():
                capture.remove()
            self._captures = {}
        model = self.unwrapped()
        stop = self.stop_state
        if not self.penalty.moved(model):
            if stop.stopped_at_step == 0:
                reason = (f"the stop criterion was met before any update (forget-train accuracy "
                          f"{stop.forget_train_accuracy_history[-1][1]:.2f}%): the model does not recognise the forget "
                          "classes on this data, or `stop_forget_accuracy` is too loose")
            else:
                reason = (f"after {self.state.global_step} optimizer step(s) the updates vanished in the weights' "
                          "precision: raise `learning_rate` or `alpha`")
            raise UnchangedWeightsError(f"The weights are exactly the original ones, nothing was unlearned: {reason}.")
        output.metrics.update(fisher_seconds=self.fisher_record.seconds, stop_check_seconds=stop.stop_check_seconds)
        if self.final_forget_train is None:  # the run did not end by a stop check: measure the weights it ends with
            self.final_forget_train = self.measure_forget_train()
        forgotten = is_forgotten(self.final_forget_train.accuracy, self.args)
        if not forgotten:
            logger.warning(self.not_forgotten_message(self.final_forget_train.accuracy))
        self.unlearning_results = UnlearningResults(
            forget_classes=self._forget_class_ids(),
            forget_train_samples=len(self.train_dataset),
            forget_loss=self.args.forget_loss,
            steps=self.state.global_step,
            stopped_at_step=stop.stopped_at_step,
            forgotten=forgotten,
            unlearn_seconds=self.resumed_seconds + output.metrics.get("train_runtime", float("nan")),
            resumed_from_step=self.resumed_from_step,
            resumed_seconds=self.resumed_seconds,
            stop_check_seconds=stop.stop_check_seconds,
            **self.fisher_record.results_fields(),
        )
        return output

    def unlearn_seconds_so_far(self) -> float:
        """Unlearning time of the run until now, the part before a resumed checkpoint included."""
        running = 0.0 if self._train_start is None else time.perf_counter() - self._train_start
        return self.resumed_seconds + running

    def _keep_finite_weights(self) -> None:
        """After a non-finite failure: weights that are still finite are the last finite step's, kept; weights that
        went non-finite in an update (an overflow) are reset to the original theta*, with a warning."""
        params = dict(self.unwrapped().named_parameters())
        anchors = self.penalty.anchors()
        if all(torch.isfinite(params[name]).all() for name in anchors):
            return
        with torch.no_grad():
            for name, anchor in anchors.items():
                params[name].copy_(anchor.to(params[name].dtype))
        logger.warning("The weights had become non-finite in an update: the model was reset to the original weights "
                       "(theta*). The last finite weights that were saved are in the run's last checkpoint.")

    def _load_callback_state(self) -> None:
        """On resume, once the checkpoint's trainer state is loaded: the stop rules' progress and the time so far
        (`ForgetStopCallback.state`), then any other callback's as `Trainer` restores them."""
        name = type(self._stop_callback).__name__
        saved = self.state.stateful_callbacks.pop(name, None)
        if isinstance(saved, dict) and saved.get("attributes"):
            self._stop_callback.restore(saved["attributes"])
        self.resumed_from_step = self.state.global_step
        super()._load_callback_state()
        self.state.stateful_callbacks[name] = self._stop_callback.state()

    # Checkpoints: written whole into the output folder's staging area, renamed into place once complete.
    def _get_output_dir(self, trial) -> str:
        return self._staging_root or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """`Trainer._save_checkpoint` into the staging area, then sealed with the run's signature and renamed to
        `output_dir/checkpoint-N` (`hf_pbu.io.checkpoints.publish_checkpoint`), older ones rotated out only then: a
        kill or a full disk while it is written leaves the previous checkpoint as the last one. A failed write
        removes the partial checkpoint and raises an `OSError` naming the folder."""
        output_dir, step = self.args.output_dir, self.state.global_step
        staged = clear_staged_checkpoint(output_dir, step) if self.args.should_save else None
        self.accelerator.wait_for_everyone()
        self._staging_root = staging_folder(output_dir)
        try:
            super()._save_checkpoint(model, trial)
        except Exception as err:
            code = write_failure(err, staged or self._staging_root)  # measured before the partial files go
            if staged is not None:
                shutil.rmtree(staged, ignore_errors=True)
                remove_work_dir_if_empty(output_dir)
            if code is not None:
                raise write_error(err, output_dir, f"checkpoint-{step}", code) from err
            raise
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()  # every process's files (its RNG state) are written
        if staged is not None:
            if self.run_signature is None:
                self.run_signature = run_signature(self.model, self.train_dataset, self.args, self.run_metadata)
            publish_checkpoint(staged, output_dir, self.run_signature, self.args.save_total_limit)
    def not_forgotten_message(self, forget_train_accuracy: float) -> str:
        """Why this run did not forget (at `forget_train_accuracy`) and the flag to change (`hf_pbu.stopping`)."""
        return not_forgotten_message(forget_train_accuracy, self.state.global_step, self.args.max_steps,
                                     self.stop_state.stopped_at_step, self.args)

    def _forget_class_ids(self) -> list[int]:
        if self._forget_classes is not None:
            return self._forget_classes.tolist()
        return sorted(set(self._given_forget_classes or self._labels_of_forget_set()))

    # Publishing (TRL's pattern): the model in its source format, the unlearning card, one upload at the end.
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The model's files, written to a staging folder and renamed into `output_dir` once all are complete (a
        full disk leaves the previous files, or none, and raises an `OSError` naming the folder); never non-finite
        weights (`NonFiniteWeightsError`)."""
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:  # no file; only the collectives of a model sharded at load time
            return self._write_model(output_dir, state_dict)
        model = self.unwrapped()
        tensors = state_dict if state_dict is not None else model.state_dict()
        bad = [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise NonFiniteWeightsError(
                f"The weights about to be saved to {output_dir} are not finite in {len(bad)} tensor(s) "
                f"({', '.join(bad[:3])}): nothing was written. Lower `alpha` or `learning_rate`."
            )
        with staged_files(output_dir, "the model") as staging:
            self._write_model(staging, state_dict)

    def _write_model(self, output_dir: str, state_dict: dict | None = None) -> None:
        """transformers models (and plain modules) as `Trainer` saves them; timm models in timm's Hub layout
        (config.json with the pretrained config and class names, model.safetensors), which `timm.create_model`
        reloads and from which `Trainer` resumes alike (no pickled training_args.bin: the card lists the settings)."""
        model = self.unwrapped()
        if not hasattr(model, "pretrained_cfg"):  # transformers, or a plain nn.Module (its state dict)
            return super()._save(output_dir, state_dict)
        if self.args.should_save:
            names = self.class_names or (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
            save_for_hf(model, output_dir, model_config={"label_names": list(names)} if names else None,
                        safe_serialization=True)

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
        hub_dataset: bool | None = None,
        **kwargs,
    ) -> None:
        """Write the unlearning card (`output_dir/README.md`) and `unlearning_results.json` from this run's
        `unlearning_results`. `dataset_name`: the data the forget set came from (a Hub dataset id goes into the
        card's metadata; `hub_dataset` says whether it is one, guessed from the name when None); `tags` are added to
        the card's. `model_name` and other arguments of `Trainer.create_model_card` are accepted for `push_to_hub` and
        not used: the card names the model after `hub_model_id` or `output_dir`, as `Trainer` does."""
        if not self.is_world_process_zero():
            return
        if self.unlearning_results is None:
            raise ValueError("The model card describes an unlearning run: call `train()` before `create_model_card()` "
                             "or `push_to_hub()`.")
        model = self.unwrapped()
        family = "transformers" if isinstance(model, PreTrainedModel) else "timm"
        base_model_id, base_model_name = base_model_of(model, self.base_model_id)
        if hub_dataset is None:
            dataset_name, hub_dataset = card_dataset(dataset_name, None)
        self.unlearning_results.save(self.args.output_dir)
        write_model_card(
            self.args.output_dir, self.unlearning_results, self.args, family, base_model_id, base_model_name,
            label_names=self.known_class_names, dataset_name=dataset_name, hub_dataset=hub_dataset,
            base_card=self.base_card(base_model_id), tags=[tags] if isinstance(tags, str) else tags,
        )

    @property
    def known_class_names(self) -> list[str] | None:
        """The class names of the run (`class_names`), else the model's own; None when neither names its classes."""
        return self.class_names or model_class_names(self.unwrapped())

    def base_card(self, base_model_id: str | None):
        """The base model's card (for its license), given or read once when first needed; None when there is none."""
        if self._base_card is NOT_READ:
            self._base_card = load_base_card(base_model_id) if base_model_id is not None else None
        return self._base_card

    def push_to_hub(
        self,
        commit_message: str | None = "Upload model unlearned with PBU (hf_pbu)",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs,
    ) -> str | None:
        """Save the model in its source format, write the card (`kwargs` go to `create_model_card`) and upload
        `output_dir` to `hub_model_id` (else the folder's name). A failed push raises `HubPushError` naming the fix
        and leaves the saved folder as it is. Returns the repository URL (None on other processes)."""
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        self.create_model_card(**kwargs)
        hub_args = {"hub_token": token, "hub_revision": revision, "hub_private_repo": private}
        config = dataclasses.replace(self.args, **{k: v for k, v in hub_args.items() if v is not None})
        return push_unlearned_model(self.args.output_dir, config, commit_message=commit_message)

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """No repository up front: `push_to_hub` creates it when the unlearned model is ready."""

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Checkpoints stay local (they resume an interrupted run); only the finished model is published."""

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the penalty terms at the current weights (so `loss` is the PBU objective: the mean of
        alpha * forget_term since the last log plus the penalty now), the mean forget CE since the last log (averaged
        over processes) and the stop rule's latest figures: the recent training batches' share of images the rule still
        counts (`stop_signal`: recognised, or with a forgotten class not last) and the whole forget set's accuracy."""
        if "loss" in logs:
            weighted, squared = self.penalty.value(self.unwrapped())
            l2_term = self.args.gamma * squared.item()
            logs.update(
                loss=logs["loss"] + weighted.item(), fisher_penalty=weighted.item() - l2_term, l2_penalty=l2_term
            )
            if self.stop_state.batch_signal is not None:
                logs["stop_signal"] = self.stop_state.batch_signal
            if self.stop_state.forget_train_accuracy_history:
                logs["forget_train_accuracy"] = self.stop_state.forget_train_accuracy_history[-1][1]
        if self._metrics and "loss" in logs:
            names = sorted(self._metrics)
            means = torch.tensor([np.mean(self._metrics[name]) for name in names], device=self.args.device)
            if self.accelerator.num_processes > 1:
                means = self.accelerator.reduce(means, reduction="mean")
            logs.update({name: value.item() for name, value in zip(names, means)})
            self._metrics.clear()
        super().log(logs, start_time)
