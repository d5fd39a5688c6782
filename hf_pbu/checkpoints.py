"""The signature of an unlearning run, saved in each of its checkpoints, so that a checkpoint resumes only the run
that wrote it.

A checkpoint holds the unlearned weights and the optimizer, not theta* nor the Fisher: those are rebuilt from the
source model on resume. Resuming another run's checkpoint (another model, other forget classes, another
objective) would silently mix two runs, the weights of one anchored to the other's theta*.
"""

import json
import os

from torch import nn
from torch.utils.data import Dataset
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

from .config import PBUConfig
from .fisher import dataset_fingerprint, model_fingerprint

logger = logging.get_logger(__name__)

SIGNATURE_FILE = "pbu_run.json"
# The fields of `PBUConfig` that define the objective (and so theta*'s weights w = beta * F + gamma).
OBJECTIVE_FIELDS = ("alpha", "beta", "gamma", "fisher_estimator", "fisher_mc_samples", "fisher_top_mass",
                    "freeze_batchnorm", "forget_loss", "npo_tau", "distill_weight", "forget_level",
                    "forget_row_learning_rate")


def run_signature(model: nn.Module, forget_data: Dataset, config: PBUConfig, metadata: dict | None = None) -> dict:
    """What a run's checkpoints must match to be resumed: the source weights (sha256), the forget data, the
    objective, and the caller's `metadata` (e.g. model id, revision, forget classes). Take it before a checkpoint's
    weights are loaded."""
    objective = {name: getattr(config, name) for name in OBJECTIVE_FIELDS}
    if config.fisher_estimator != "mc":
        objective.pop("fisher_mc_samples")
    return {
        **(metadata or {}),
        "model_weights_sha256": model_fingerprint(model),
        "forget_data": dataset_fingerprint(forget_data),
        "forget_samples": len(forget_data),
        "objective": objective,
    }


def write_signature(folder: str, signature: dict) -> None:
    with open(os.path.join(folder, SIGNATURE_FILE), "w") as f:
        json.dump(signature, f, indent=2, sort_keys=True)


def checkpoint_to_resume(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | None:
    """The folder `Trainer.train(resume_from_checkpoint=...)` will load: a path, or the last checkpoint of
    `output_dir` for True."""
    if isinstance(resume_from_checkpoint, str):
        return resume_from_checkpoint
    if resume_from_checkpoint and os.path.isdir(output_dir):
        return get_last_checkpoint(output_dir)
    return None


def check_resumable(checkpoint: str, signature: dict, output_dir: str) -> None:
    """Refuse to resume `checkpoint` unless the run that wrote it had this `signature`."""
    path = os.path.join(checkpoint, SIGNATURE_FILE)
    if not os.path.exists(path):
        logger.warning(f"{checkpoint} has no {SIGNATURE_FILE}: cannot check that it comes from this run; resuming.")
        return
    with open(path) as f:
        saved = json.load(f)
    # A JSON round trip, so that tuples and lists (and other JSON spellings) compare alike.
    current = json.loads(json.dumps(signature))
    differences = [
        f"{key}: {saved.get(key)!r} in the checkpoint, {current.get(key)!r} now"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]
    if differences:
        raise ValueError(
            f"Cannot resume {checkpoint}: it was written by another unlearning run (another model, forget set or "
            f"objective), and resuming would mix the two. Differences: {'; '.join(differences)}. To start afresh, use "
            f"another --output_dir or delete the checkpoint-* folders in {output_dir}; to resume it, rerun with the "
            "checkpoint's settings."
        )
