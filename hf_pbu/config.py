"""`PBUConfig`: the `TrainingArguments` of a Partially Blinded Unlearning run."""

import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

import torch
from transformers import TrainingArguments
from transformers.utils import logging, strtobool

from .argument_checks import check_numeric_arguments
from .objective.forget_losses import TERMS, ForgetLoss, build_forget_loss
from .stopping import STOP_RULES

logger = logging.get_logger(__name__)

FisherEstimator = Literal["auto", "exact", "mc", "empirical"]  # `hf_pbu.objective.fisher.ESTIMATORS`, and "auto"
FISHER_ESTIMATOR_CHOICES = get_args(FisherEstimator)
StopRuleName = Literal["auto", "forget_accuracy", "ranked_last", "plateau"]
STOP_RULE_CHOICES = get_args(StopRuleName)
ForgetLevel = Literal["output", "head", "features"]
FORGET_LEVELS = get_args(ForgetLevel)

# Fields that do not change the unlearned weights: where files go, what is logged or pushed, and resources (workers,
# memory, how the same arithmetic is scheduled), by name or prefix. Every other field, `TrainingArguments`' and
# `PBUConfig`'s alike, is a setting of the run, which a resumed checkpoint must share (`PBUConfig.run_settings`): a new
# field is one unless it is named here.
RUN_ONLY_FIELDS = (
    "fisher_batch_size", "fisher_memory_budget", "fisher_cache_dir", "evidence", "retained_drop_warning", "output_dir",
    "logging_", "log_", "disable_tqdm", "report_to", "run_name", "project", "trackio_", "eval_",
    "per_device_eval_batch_size", "prediction_loss_only", "include_", "batch_eval_metrics", "bf16_full_eval",
    "fp16_full_eval", "save_", "enable_jit_checkpoint", "push_to_hub", "hub_", "load_best_model_at_end",
    "metric_for_best_model", "greater_is_better", "restore_callback_states_from_checkpoint", "dataloader_num_workers",
    "dataloader_pin_memory", "dataloader_persistent_workers", "dataloader_prefetch_factor",
    "dataloader_multiprocessing_context", "remove_unused_columns", "ddp_", "skip_memory_metrics", "do_train",
    "do_eval", "do_predict", "resume_from_checkpoint", "local_rank", "torch_empty_cache_steps", "debug",
    "gradient_checkpointing", "activation_checkpointing", "torch_compile", "use_cache",
)

# The step budget: part of a run's settings only where the learning-rate schedule depends on it.
BUDGET_FIELDS = ("max_steps", "num_train_epochs", "min_step_budget")


@dataclass
class PBUConfig(TrainingArguments):
    """Arguments of `PBUTrainer`, on top of `transformers.TrainingArguments`.

    The objective minimised on the forget data S_n only is

        alpha * forget_term(x, y) + sum_i (beta * F_i + gamma) * (theta_i - theta*_i)^2

    with the bounded forget term `complement+distill` by default (`forget_loss`; the paper's -CE is `neg_ce`) and the
    forget classes' head rows refit apart from the anchor (`forget_level='head'`). The anchor weights follow the
    reference code (alpha 721, beta 100, gamma 4001); the learning rate is 5e-5 and the optimizer `TrainingArguments`'
    default `optim`, `adamw_torch_fused` (AdamW, with `weight_decay`), which the card names as run. The number of
    epochs, and at least `min_step_budget` steps, bound the optimizer steps, counted as for one process whatever the
    number of processes (`step_budget`); the stop rule (`stop_rule`, `hf_pbu.stopping`) usually ends the run first.

    Every number is checked when the arguments are built (`hf_pbu.argument_checks`): finite and in its range, with
    one `ValueError` naming the flag, so that `alpha=nan` or `learning_rate=0` never reaches a run.
    """

    alpha: float = field(
        default=721.0,
        metadata={"help": "Weight of the forget term (`forget_loss`); > 0, since with 0 nothing is unlearned."},
    )
    forget_loss: str = field(
        default="complement+distill",
        metadata={
            "help": "The forget term, one of " + ", ".join(f"'{name}'" for name in TERMS) + " or a '+' join of them "
            "(e.g. 'npo+complement'); hf_pbu.objective.forget_losses describes each. 'neg_ce' is the paper's -CE, "
            "unbounded; the others stop pushing once an image is forgotten."
        },
    )
    npo_tau: float = field(default=1.0, metadata={"help": "tau of the 'npo' term."})
    distill_weight: float = field(
        default=10.0, metadata={"help": "Weight of the 'distill' term relative to the other terms (all times alpha)."}
    )
    forget_level: ForgetLevel = field(
        default="head",
        metadata={
            "help": "Where the class is removed. 'output': the paper's objective, every parameter anchored. 'head': "
            "the forget classes' head rows also leave the anchor and are refit until each forgotten class ranks last "
            "on its images (hf_pbu.objective.forget_rows). 'features': as 'head', with the forget term taken through "
            "the original head, so that the backbone must move the class's features.",
            "choices": list(FORGET_LEVELS),
        },
    )
    forget_row_learning_rate: float = field(
        default=1e-2,
        metadata={"help": "Learning rate of the refit forget rows (levels 'head' and 'features'): they travel until "
                  "the class ranks last, far further than the anchored weights."},
    )
    forget_row_centring: bool = field(
        default=False,
        metadata={"help": "Keep each refit forget row's mean coordinate at the retained rows' (levels 'head' and "
                  "'features'): the row cannot hide its class by a uniform shift, which an attacker undoes with no "
                  "image, and must turn away from the class's features."},
    )
    beta: float = field(
        default=100.0, metadata={"help": "Weight of the Fisher-weighted distance to the original parameters."}
    )
    gamma: float = field(
        default=4001.0, metadata={"help": "Weight of the plain L2 distance to the original parameters."}
    )
    fisher_estimator: FisherEstimator = field(
        default="mc",
        metadata={
            "help": "Diagonal Fisher estimator, an expectation over the model's own softmax: 'mc' (labels sampled "
            "from it, `fisher_mc_samples` backward passes per image), 'exact' (C-1 passes per image), 'empirical' "
            "(the true labels) or 'auto' ('exact' up to `fisher_exact_max_classes` classes, else 'mc').",
            "choices": list(FISHER_ESTIMATOR_CHOICES),
        },
    )
    fisher_max_samples: int | None = field(
        default=1024,
        metadata={"help": "Estimate the Fisher on a seeded random sample of at most this many forget images (None: "
                  "all), so that its cost does not grow with the forget set."},
    )
    fisher_exact_max_classes: int = field(
        default=20, metadata={"help": "Under `fisher_estimator='auto'`, the most classes for which it is 'exact'."}
    )
    fisher_mc_samples: int = field(default=1, metadata={"help": "Labels drawn per image by the 'mc' estimator."})
    fisher_top_mass: float | None = field(
        default=None,
        metadata={"help": "With the 'exact' estimator, only each image's most likely classes covering this "
                  "probability mass enter the Fisher (None: every class)."},
    )
    fisher_batch_size: int = field(
        default=64, metadata={"help": "Images per batch while computing the Fisher."}
    )
    fisher_memory_budget: int | None = field(
        default=None,
        metadata={"help": "Bytes the Fisher's chunks of images may take at once (a chunk that runs out of memory is "
                  "halved). None: 70 percent of the accelerator's free memory, or 2 GiB on CPU."},
    )
    fisher_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Folder caching Fisher diagonals, keyed by the weights and the forget data. None: "
                  "`$HF_ASSETS_CACHE/hf_pbu/default/fisher`; 'none' disables the cache."},
    )
    stop_rule: StopRuleName = field(
        default="auto",
        metadata={
            "help": "When the run ends: " + "; ".join(f"'{name}': {rule.summary}" for name, rule in STOP_RULES.items())
            + ". 'auto': 'ranked_last' for the level 'head', 'plateau' for 'features', and for 'output' "
            "'forget_accuracy' with 'neg_ce', 'plateau' with the bounded terms.",
            "choices": list(STOP_RULE_CHOICES),
        },
    )
    stop_forget_accuracy: float = field(
        default=0.5,
        metadata={"help": "Percent of the forget training images still held at which the run has forgotten: "
                  "recognised ('forget_accuracy'), or with a forgotten class not last ('ranked_last'). A run ending "
                  "above it in forget accuracy did not forget, whatever the rule."},
    )
    stop_trigger_accuracy: float = field(
        default=5.0,
        metadata={"help": "The threshold rules' cheap signal: a step whose own training batches hold at most this "
                  "percent (as `stop_forget_accuracy` counts) triggers an evaluation of the whole forget set."},
    )
    stop_plateau_tolerance: float = field(
        default=0.01, metadata={"help": "Relative fall of the objective that counts as progress ('plateau')."}
    )
    stop_plateau_patience: int = field(
        default=3, metadata={"help": "Epochs without progress after which 'plateau' stops the run."}
    )
    evidence: bool = field(
        default=False,
        metadata={"help": "After unlearning, also run the costly attacks of the suite (hf_pbu.evidence.suite: the "
                  "whole-model relearns, the 100-shot probe) on the original and the unlearned model; the cheap ones "
                  "always run."},
    )
    evidence_required_level: ForgetLevel = field(
        default="head",
        metadata={"help": "The run fails (exit non-zero, nothing pushed) when its own attacks find the class "
                  "forgotten at a lower level: 'head' refuses a class an attack through its head row brings back; "
                  "'output' accepts it; 'features' also refuses one that the features alone give back.",
                  "choices": list(FORGET_LEVELS)},
    )
    retained_drop_warning: float = field(
        default=5.0,
        metadata={"help": "Points of test accuracy a retained class may lose before the run names it (in the log, "
                  "the card and unlearning_results.json's `collapsed_classes`): forgetting one class must not wipe "
                  "out another."},
    )
    freeze_batchnorm: bool = field(
        default=True,
        metadata={"help": "Keep normalisation layers in eval mode while unlearning: batches of the forget class alone "
                  "would overwrite the running statistics the retained classes rely on."},
    )

    # Defaults that differ from `TrainingArguments` (the reference recipe, and image batches for any model).
    learning_rate: float = field(
        default=5e-5,
        metadata={"help": "Learning rate of the optimizer (`optim`, by default `adamw_torch_fused`: AdamW)."},
    )
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Forget images per batch and device."})
    per_device_eval_batch_size: int = field(
        default=64, metadata={"help": "Images per batch and device of the stop checks and evaluations."}
    )
    num_train_epochs: float = field(
        default=20.0,
        metadata={"help": "Epochs over the forget data, as one process counts them: the step budget when `max_steps` "
                  "is unset (at least `min_step_budget` steps)."},
    )
    min_step_budget: int = field(
        default=400,
        metadata={"help": "Least optimizer steps of the step budget when `max_steps` is unset: 20 epochs over a few "
                  "dozen images are too few steps to forget a class."},
    )
    lr_scheduler_type: str = field(
        default="constant", metadata={"help": "Learning-rate schedule (the reference's is constant)."}
    )
    logging_steps: float = field(default=1, metadata={"help": "Log every X optimizer steps."})
    max_steps: int = field(
        default=-1,
        metadata={"help": "Upper bound on optimizer steps; -1: `num_train_epochs` over the forget data as one process "
                  "counts them (a run on 8 GPUs has the budget of one, each step seeing 8 times the images)."},
    )
    save_steps: float = field(
        default=0.1,
        metadata={"help": "Checkpoint every X optimizer steps, so that an interrupted run resumes; below 1, every X "
                  "of the step budget."},
    )
    save_total_limit: int | None = field(default=1, metadata={"help": "Keep only the last checkpoint."})
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Always False: the images are decoded from the dataset's image and label columns, which "
                  "True would drop (set back to False with a notice)."},
    )
    label_names: list[str] | None = field(
        default_factory=lambda: ["labels"], metadata={"help": "Keys of the inputs that hold the labels."}
    )
    ddp_timeout: int = field(
        default=10800,
        metadata={"help": "Seconds a process waits on the others before failing: 3 hours, since the others wait while "
                  "the main process prepares the dataset (hours for ImageNet)."},
    )

    def __post_init__(self):
        refuse_sharded_training(self)
        check_numeric_arguments(self)  # every number finite and in range, before `TrainingArguments` uses them
        keep_image_columns(self)
        super().__post_init__()
        if self.dataloader_pin_memory and (self.use_cpu or not torch.accelerator.is_available()):
            self.dataloader_pin_memory = False  # nothing to pin for, and DataLoader would warn every epoch
        for name, choices in (("fisher_estimator", FISHER_ESTIMATOR_CHOICES), ("forget_level", FORGET_LEVELS),
                              ("evidence_required_level", FORGET_LEVELS), ("stop_rule", STOP_RULE_CHOICES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {', '.join(map(repr, choices))}.")
        self.build_forget_loss()  # raises on an unknown name
        if self.stop_rule == "ranked_last" and not self.refits_forget_rows:
            raise ValueError("stop_rule='ranked_last' measures the refit forget rows of forget_level 'head' or "
                             "'features': use it with one of those, or stop_rule 'forget_accuracy' or 'plateau'.")

    def build_forget_loss(self) -> ForgetLoss:
        """The forget term this config names, with its options."""
        return build_forget_loss(self.forget_loss, npo_tau=self.npo_tau, distill_weight=self.distill_weight)

    @property
    def refits_forget_rows(self) -> bool:
        """Whether the forget classes' head rows leave the anchor and are refit (levels 'head' and 'features')."""
        return self.forget_level != "output"

    @property
    def resolved_stop_rule(self) -> str:
        """The stop rule in force: 'auto' resolved by the forget level and whether the forget term is bounded."""
        if self.stop_rule != "auto":
            return self.stop_rule
        if self.forget_level == "head":
            return "ranked_last"
        if self.forget_level == "features" or self.build_forget_loss().bounded:
            return "plateau"
        return "forget_accuracy"

    def fisher_estimator_for(self, num_classes: int) -> str:
        """The estimator a model with `num_classes` outputs gets: `fisher_estimator`, with 'auto' resolved."""
        if self.fisher_estimator != "auto":
            return self.fisher_estimator
        return "exact" if num_classes <= self.fisher_exact_max_classes else "mc"

    def run_settings(self) -> dict[str, Any]:
        """Every setting that shapes the unlearned weights, as JSON values (`TrainingArguments.to_dict`): the fields
        not among `RUN_ONLY_FIELDS`, and the step budget unless the learning rate is constant (then the budget changes
        nothing before the run's end, and a resume may extend it). A checkpoint must share them to be resumed; a new
        field is among them unless `RUN_ONLY_FIELDS` names it."""
        values = self.to_dict()
        settings = {f.name: values[f.name] for f in fields(self) if f.init and not f.name.startswith(RUN_ONLY_FIELDS)}
        if settings["lr_scheduler_type"] == "constant":  # the budget only bounds the run: a resume may extend it
            for name in BUDGET_FIELDS:
                settings.pop(name)
        return settings

    def step_budget(self, num_samples: int) -> int:
        """Optimizer steps of `num_train_epochs` over `num_samples` forget images in one process (the count
        `Trainer` makes with a single process), and at least `min_step_budget`, used as `max_steps` when none is
        given: with N processes, `Trainer` would divide it by N (a budget of <= 40 steps on 8 GPUs where one GPU had
        300). The floor counts optimizer steps because that is what forgetting takes, whatever the set's size: 20
        epochs over 40 images are 20 steps."""
        batches = num_samples / self.train_batch_size
        batches = math.floor(batches) if self.dataloader_drop_last else math.ceil(batches)
        updates_per_epoch = max(math.ceil(batches / self.gradient_accumulation_steps), 1)
        return max(math.ceil(self.num_train_epochs * updates_per_epoch), self.min_step_budget)


def keep_image_columns(args: TrainingArguments) -> None:
    """`remove_unused_columns=True` (carried over from a training script) would drop the image and label columns
    that the on-the-fly transform reads, and the run would fail after the Fisher: set it back to False, with a notice,
    before any work is done."""
    if args.remove_unused_columns:
        logger.warning("--remove_unused_columns True would drop the image and label columns that the run decodes on "
                       "the fly: using --remove_unused_columns False.")
        args.remove_unused_columns = False


def refuse_sharded_training(args: TrainingArguments) -> None:
    """PBU adds the anchor penalty's gradient to each full parameter's `.grad` and keeps theta* unsharded, which
    DeepSpeed and FSDP break: refuse them (as arguments, or set by `accelerate launch` in the environment) before
    any work is done."""
    requested = [
        name
        for name, on in (
            ("DeepSpeed", args.deepspeed or strtobool(os.environ.get("ACCELERATE_USE_DEEPSPEED", "false"))),
            ("FSDP", args.fsdp or strtobool(os.environ.get("ACCELERATE_USE_FSDP", "false"))),
        )
        if on
    ]
    if requested:
        raise ValueError(
            f"PBU does not run under {' or '.join(requested)}: it adds the anchor penalty's gradient to each "
            "parameter's `.grad`, which they shard. Run it with DDP (`accelerate launch --multi_gpu`) or on one device."
        )
