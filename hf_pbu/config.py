"""`PBUConfig`: the `TrainingArguments` of a Partially Blinded Unlearning run."""

import math
import os
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import TrainingArguments
from transformers.utils import logging, strtobool

from .argument_checks import check_numeric_arguments
from .objective.fisher import ESTIMATORS
from .objective.forget_losses import FORGET_LOSSES, build_forget_loss

logger = logging.get_logger(__name__)

FISHER_ESTIMATOR_CHOICES = ("auto", *ESTIMATORS)
FisherEstimator = Literal[FISHER_ESTIMATOR_CHOICES]
StopRule = Literal["auto", "forget_accuracy", "ranked_last", "plateau"]
STOP_RULES = ("auto", "forget_accuracy", "ranked_last", "plateau")
ForgetLevel = Literal["output", "head", "features"]
FORGET_LEVELS = ("output", "head", "features")


@dataclass
class PBUConfig(TrainingArguments):
    """Arguments of `PBUTrainer`, on top of `transformers.TrainingArguments`.

    The objective minimised on the forget data S_n only is

        alpha * forget_term(x, y) + sum_i (beta * F_i + gamma) * (theta_i - theta*_i)^2

    with the paper's forget term -CE(f_theta(x), y) by default (`forget_loss`; the bounded alternatives are in
    `hf_pbu.forget_losses`).

    Defaults follow the reference code (Adam, batch 64, alpha 721, beta 100, gamma 4001), except the learning rate
    (5e-5, measured: benchmarks/RESULTS.md). The number of epochs, and at least `min_step_budget` steps, set an upper
    bound on optimizer steps, counted as for one process whatever the number of processes (`step_budget`): the run
    stops by its stop rule first (`stop_rule`).

    Every number is checked when the arguments are built (`hf_pbu.argument_checks`): finite and in its range, with
    one `ValueError` naming the flag, so that `alpha=nan` or `learning_rate=0` never reaches a run.
    """

    alpha: float = field(
        default=721.0,
        metadata={"help": "Weight of the forget term (the negative cross-entropy by default); > 0, since with 0 "
                  "nothing is unlearned."},
    )
    forget_loss: str = field(
        default="complement+distill",
        metadata={
            "help": "The forget term. Default 'complement+distill': -log(1 - p_y) plus KL to the original model's "
            "distribution over the retained classes, which kept the retained classes far closer to retraining than "
            "-CE on the benchmarks (benchmarks/RESULTS.md). 'neg_ce' is the paper's -CE (unbounded); the other "
            "bounded terms, whose gradient vanishes "
            "once an image is forgotten: 'npo' ((2/tau) log(1 + (p/p*)^tau), p* the original model's probability of "
            "the label), 'complement' (-log(1 - p_y)), 'relabel' (CE towards the original model's most likely "
            "retained class), 'distill' (KL to the original model's distribution over the retained classes), or a "
            "'+' join such as 'npo+distill'. npo, relabel and distill keep a frozen copy of the original model "
            "(one more forward per step, the model's memory once more).",
            "choices": list(FORGET_LOSSES),
        },
    )
    npo_tau: float = field(default=1.0, metadata={"help": "tau of the 'npo' term."})
    distill_weight: float = field(
        default=10.0,
        metadata={
            "help": "Weight of the 'distill' term relative to the other terms (all times alpha). 10 kept the retained "
            "classes closer to retraining than 1 or 5, on average over every class and on the worst class, on the "
            "four benchmark models (benchmarks/RESULTS.md, 'Tuning the default')."
        },
    )
    forget_level: ForgetLevel = field(
        default="head",
        metadata={
            "help": "Where the class is removed. 'head' (default): the forget classes' head rows leave the anchor and "
            "are refit, at `forget_row_learning_rate`, until each forgotten class ranks last on its images, as in a "
            "model retrained without it (hf_pbu.forget_rows); the rest of the model keeps the paper's anchored "
            "objective, and the run stops once the classes rank last. On every plain-CE Fashion-MNIST class the "
            "relearn attacks brought back 3.5 and 0 percent (whole model, head alone) on average, a retrained model "
            "0 and 0 (with a label-smoothed base model: 70 and 0, against 37 and 0), "
            "within a point of its A_Dr, in about 25 steps; the features still set the class apart "
            "(benchmarks/RESULTS.md, 'Forgotten in the model'). 'output': the "
            "paper's objective alone, every parameter anchored: the class stops being predicted, but its head row "
            "still points at its features, and a few fine-tuning steps bring it back. 'features': as 'head', with "
            "the forget term taken through the original head, so that the backbone moves the class's features out of "
            "its region (against the prototype attack), at a cost to the retained classes that `alpha` sets.",
            "choices": list(FORGET_LEVELS),
        },
    )
    forget_row_learning_rate: float = field(
        default=1e-2,
        metadata={
            "help": "Learning rate of the forget classes' head rows under forget_level 'head' or 'features': they must "
            "travel until the class ranks last (a few tenths per weight), and stop there (their term is then 0)."
        },
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
            "help": "Diagonal Fisher estimator, the expectation over the model's own softmax (the reference code's "
            "classif_logits): 'mc' (default: labels sampled from the softmax, `fisher_mc_samples` backward passes per "
            "image), 'exact' (C-1 passes per image), 'empirical' (the true labels; one pass) or 'auto' ('exact' up to "
            "`fisher_exact_max_classes` classes, else 'mc'). On the benchmark models the estimator, and even dropping "
            "the Fisher term, did not change the unlearned model, while the exact Fisher cost more than the "
            "unlearning itself (benchmarks/RESULTS.md, 'Fisher estimator for many classes').",
            "choices": list(FISHER_ESTIMATOR_CHOICES),
        },
    )
    fisher_max_samples: int | None = field(
        default=1024,
        metadata={
            "help": "The Fisher is a mean over the forget images: estimate it on a seeded random sample of at most "
            "this many (None: all of them), so that its cost does not grow with the forget set."
        },
    )
    fisher_exact_max_classes: int = field(
        default=20, metadata={"help": "Under `fisher_estimator='auto'`, the most classes for which it is 'exact'."}
    )
    fisher_mc_samples: int = field(
        default=1, metadata={"help": "Labels drawn per image when `fisher_estimator='mc'`."}
    )
    fisher_top_mass: float | None = field(
        default=None,
        metadata={
            "help": "For many classes: with the 'exact' estimator, only each image's most likely classes covering "
            "this probability mass enter the Fisher (the uncovered mass is logged). None: every class."
        },
    )
    fisher_batch_size: int = field(default=64, metadata={"help": "Images per batch while computing the Fisher."})
    fisher_memory_budget: int | None = field(
        default=None,
        metadata={
            "help": "Bytes that the Fisher's chunks of images may take at once (a batch of `fisher_batch_size` runs "
            "in as many chunks as needed; a chunk that runs out of memory is halved). None: 70 percent of the "
            "accelerator's free memory, or 2 GiB on CPU."
        },
    )
    fisher_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder caching Fisher diagonals as safetensors, keyed by a hash of the weights and the forget "
            "data. Defaults to huggingface_hub's assets cache, `$HF_ASSETS_CACHE/hf_pbu/default/fisher`; pass "
            "'none' to disable the cache."
        },
    )
    stop_forget_accuracy: float = field(
        default=0.5,
        metadata={
            "help": "Stop once the accuracy (percent) on the forget training data is at or below this value. The "
            "test images of the class follow the training ones within sampling noise; 0.5 leaves a margin for "
            "the target of <= 1 percent on them. Under the 'plateau' stop rule, the run warns when it ends above it."
        },
    )
    stop_rule: StopRule = field(
        default="auto",
        metadata={
            "help": "'forget_accuracy': stop once the forget accuracy is at or below `stop_forget_accuracy` (right "
            "for the unbounded 'neg_ce': each further step costs the retained classes). 'ranked_last': stop once the "
            "forgotten classes rank last on all but `stop_forget_accuracy` percent of the forget images, as in a model "
            "retrained without them (for the 'head' level, whose forget rows do the forgetting). 'plateau': stop once "
            "the objective (the forget term's mean over an epoch plus the anchor penalty at its end) has not fallen "
            "by `stop_plateau_tolerance` for `stop_plateau_patience` epochs in a row: a bounded term's optimum is a "
            "real one, and the steps after the class is gone let the anchors restore the retained classes. 'auto': "
            "'ranked_last' for forget_level 'head', 'plateau' for 'features', and for 'output' 'forget_accuracy' "
            "with 'neg_ce', 'plateau' with bounded terms.",
            "choices": list(STOP_RULES),
        },
    )
    stop_plateau_tolerance: float = field(
        default=0.01, metadata={"help": "Relative fall of the objective that counts as progress (plateau rule)."}
    )
    stop_plateau_patience: int = field(
        default=3, metadata={"help": "Epochs without progress after which the plateau rule stops the run."}
    )
    evidence: bool = field(
        default=False,
        metadata={
            "help": "After unlearning, also run the linear probe on the penultimate features and the fine-tune "
            "relearn attack (the whole model, k = 10 and 50 images per class, 100 steps) on the original and the "
            "unlearned model, for the results and the card (needs retained training data; hf_pbu.evidence). The "
            "per-class chart, the forgotten classes' confusion and the cheap attacks (prototype, head-only relearn) "
            "are always made, with the level the class was forgotten at."
        },
    )
    stop_trigger_accuracy: float = field(
        default=5.0,
        metadata={
            "help": "The 'forget_accuracy' rule's cheap signal: a step whose training batches (scored by the weights "
            "about to be updated, read off the logits the step computes anyway) are at or below this accuracy "
            "(percent) triggers an evaluation of the whole forget set with those same weights. Looser than "
            "`stop_forget_accuracy` so that a batch with an image or two still recognised does not hide a forget "
            "set that already passes; after a failed evaluation the next one waits 1, 2, 4, ... steps."
        },
    )
    freeze_batchnorm: bool = field(
        default=True,
        metadata={
            "help": "Keep normalisation layers in eval mode while unlearning: batches of the forget class alone "
            "would otherwise overwrite the running statistics that the retained classes rely on."
        },
    )

    # Defaults that differ from `TrainingArguments` (the reference recipe, and image batches for any model).
    learning_rate: float = field(
        default=5e-5,
        metadata={
            "help": "Adam learning rate. The reference used 1e-4 for a fixed 5 epochs; with the stop criterion, 5e-5 "
            "stops closer to the moment the class is gone (benchmarks/RESULTS.md, 'PBU defaults')."
        },
    )
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Forget images per batch and device."})
    per_device_eval_batch_size: int = field(
        default=64, metadata={"help": "Images per batch and device of the stop checks and evaluations."}
    )
    num_train_epochs: float = field(
        default=20.0,
        metadata={
            "help": "Upper bound on epochs over the forget data, as one process counts them (the step budget when "
            "`max_steps` is unset, and at least `min_step_budget` steps); the stop criterion usually ends the run "
            "first."
        },
    )
    min_step_budget: int = field(
        default=400,
        metadata={
            "help": "Least optimizer steps of the step budget when `max_steps` is unset: a forget set of a few dozen "
            "images is one batch, and 20 epochs over it are 20 steps, too few to forget a class (the default run "
            "reached its plateau after 31 to 201 steps on forget sets of 20 to 150 images, benchmarks/RESULTS.md, "
            "'Small forget sets'). "
            "Larger forget sets keep `num_train_epochs` over them. The stop rule still ends the run first."
        },
    )
    lr_scheduler_type: str = field(
        default="constant", metadata={"help": "Learning-rate schedule (reference: constant)."}
    )
    logging_steps: float = field(default=1, metadata={"help": "Log every X optimizer steps."})
    max_steps: int = field(
        default=-1,
        metadata={
            "help": "Upper bound on optimizer steps. Unset (-1): `num_train_epochs` over the forget data as one "
            "process would count them (per-device batch and gradient accumulation, not the number of processes), so "
            "that a run on 8 GPUs has the same step budget as on one and each step sees 8 times the images; at least "
            "`min_step_budget`."
        },
    )
    save_steps: float = field(
        default=0.1,
        metadata={
            "help": "Checkpoint every X optimizer steps, so that an interrupted run resumes from there; below 1, every "
            "X of the step budget (0.1: every tenth), whatever the number of processes."
        },
    )
    save_total_limit: int | None = field(default=1, metadata={"help": "Keep only the last checkpoint."})
    remove_unused_columns: bool = field(
        default=False,
        metadata={
            "help": "Always False: the images are decoded and transformed on the fly from the dataset's image and "
            "label columns, which `True` would drop before they are read (set back to False with a notice)."
        },
    )
    label_names: list[str] | None = field(
        default_factory=lambda: ["labels"], metadata={"help": "Keys of the inputs that hold the labels."}
    )
    ddp_timeout: int = field(
        default=10800,
        metadata={
            "help": "Seconds a process waits on the others (`torch.distributed` timeout) before failing. 3 hours: the "
            "other processes wait behind the main one while it downloads and prepares the dataset, which takes "
            "hours for ImageNet (transformers' 1800 s would fail them); a collective that truly hangs is also "
            "reported only after this long."
        },
    )

    def __post_init__(self):
        refuse_sharded_training(self)
        check_numeric_arguments(self)  # every number finite and in range, before `TrainingArguments` uses them
        keep_image_columns(self)
        super().__post_init__()
        if self.dataloader_pin_memory and (self.use_cpu or not torch.accelerator.is_available()):
            self.dataloader_pin_memory = False  # nothing to pin for, and DataLoader would warn every epoch
        if self.fisher_estimator not in FISHER_ESTIMATOR_CHOICES:
            choices = ", ".join(map(repr, FISHER_ESTIMATOR_CHOICES))
            raise ValueError(f"fisher_estimator={self.fisher_estimator!r} is not one of {choices}.")
        build_forget_loss(self.forget_loss, self.npo_tau, self.distill_weight)  # raises on an unknown name
        if self.forget_level not in FORGET_LEVELS:
            raise ValueError(f"forget_level={self.forget_level!r} is not one of {', '.join(map(repr, FORGET_LEVELS))}.")
        if self.stop_rule not in STOP_RULES:
            raise ValueError(f"stop_rule={self.stop_rule!r} is not one of {', '.join(map(repr, STOP_RULES))}.")
        if self.stop_rule == "ranked_last" and self.forget_level == "output":
            raise ValueError("stop_rule='ranked_last' measures the refit forget rows of forget_level 'head' or "
                             "'features': use it with one of those, or stop_rule 'forget_accuracy' or 'plateau'.")

    @property
    def resolved_stop_rule(self) -> str:
        """The stop rule in force: 'auto' resolved by the forget level and whether the forget term is bounded."""
        if self.stop_rule != "auto":
            return self.stop_rule
        if self.forget_level != "output":
            return {"head": "ranked_last", "features": "plateau"}[self.forget_level]
        bounded = build_forget_loss(self.forget_loss, self.npo_tau, self.distill_weight).bounded
        return "plateau" if bounded else "forget_accuracy"

    def fisher_estimator_for(self, num_classes: int) -> str:
        """The estimator a model with `num_classes` outputs gets: `fisher_estimator`, with 'auto' resolved."""
        if self.fisher_estimator != "auto":
            return self.fisher_estimator
        return "exact" if num_classes <= self.fisher_exact_max_classes else "mc"

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
