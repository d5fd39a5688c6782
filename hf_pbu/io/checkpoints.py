"""A run's checkpoints: written whole or not at all, resumed only when complete and written by the same run.

A checkpoint is written into the output folder's staging area and renamed to `checkpoint-N` once complete, with
`MANIFEST_FILE` (the size of every file) and, last, `SIGNATURE_FILE` (the run's signature): a kill or a full disk
while it is written leaves no `checkpoint-N` at all, and a folder without both files, or whose files do not have
their recorded sizes (copied in part, or left by another tool), is reported as incomplete and never resumed.

A checkpoint holds the unlearned weights and the optimizer, not theta* nor the Fisher: those are rebuilt from the
source model on resume. Resuming another run's checkpoint (another model, other forget classes, another objective,
another learning rate) would silently mix two runs, the weights of one anchored to the other's theta* or trained at
the other's settings. A run removes or replaces only its own checkpoints (complete, with its signature): one it did
not write at a step it writes (copied in, another run's, incomplete) is renamed `checkpoint-N.kept-<time>`, and older
ones are left where they are.
"""

import json
import os
import re
import shutil
import time

from torch import nn
from torch.utils.data import Dataset
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..config import PBUConfig
from ..objective.fisher import dataset_fingerprint, model_fingerprint
from .atomic import fsync_folder, fsync_tree, remove_work_dir_if_empty, work_dir

logger = logging.get_logger(__name__)

SIGNATURE_FILE = "pbu_run.json"
MANIFEST_FILE = "pbu_checkpoint.json"
CHECKPOINT_PATTERN = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def run_signature(model: nn.Module, forget_data: Dataset, config: PBUConfig, metadata: dict | None = None) -> dict:
    """What a run's checkpoints must match to be resumed: the source weights (sha256), the forget data, every setting
    that shapes the unlearned weights (`PBUConfig.run_settings`: the objective, the optimizer, its schedule, the batch
    size, the step budget, the seed, ...), the number of processes, and the caller's `metadata` (e.g. model id,
    revision, forget classes). Take it before a checkpoint's weights are loaded."""
    return {
        **(metadata or {}),
        "model_weights_sha256": model_fingerprint(model),
        "forget_data": dataset_fingerprint(forget_data),
        "forget_samples": len(forget_data),
        "processes": config.world_size,
        "settings": config.run_settings(),
    }


def write_signature(folder: str, signature: dict) -> None:
    with open(os.path.join(folder, SIGNATURE_FILE), "w") as f:
        json.dump(signature, f, indent=2, sort_keys=True)


def checkpoint_problem(folder: str) -> str | None:
    """Why `folder` is not a complete checkpoint of a PBU run; None when it is one."""
    if not os.path.isdir(folder):
        return "it is not a folder"
    for name in (MANIFEST_FILE, SIGNATURE_FILE):
        if not os.path.isfile(os.path.join(folder, name)):
            return f"it has no {name}: it was interrupted while being written, or was not written by hf_pbu"
    try:
        with open(os.path.join(folder, SIGNATURE_FILE)) as f:
            json.load(f)
        with open(os.path.join(folder, MANIFEST_FILE)) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"its {SIGNATURE_FILE} or {MANIFEST_FILE} cannot be read ({type(err).__name__}: {err})"
    for name, size in files.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        if os.path.getsize(path) != size:
            return f"{name} holds {os.path.getsize(path)} bytes where {size} were written"
    return None


def checkpoints_by_step(output_dir: str) -> list[tuple[int, str]]:
    """The `checkpoint-N` folders of `output_dir`, by increasing N."""
    if not os.path.isdir(output_dir):
        return []
    found = [(CHECKPOINT_PATTERN.match(name), os.path.join(output_dir, name)) for name in os.listdir(output_dir)]
    return sorted((int(match[1]), path) for match, path in found if match and os.path.isdir(path))


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The complete checkpoint of `output_dir` with the most steps; newer incomplete ones are reported, skipped."""
    for _, path in reversed(checkpoints_by_step(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning(f"Skipping {path}: it is not a complete checkpoint ({problem}).")
    return None


def checkpoint_to_resume(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | None:
    """The folder `Trainer.train(resume_from_checkpoint=...)` will load: a path, which must be a complete
    checkpoint, or, for True, the last complete checkpoint of `output_dir`."""
    if isinstance(resume_from_checkpoint, str):
        problem = checkpoint_problem(resume_from_checkpoint)
        if problem is not None:
            raise ValueError(f"Cannot resume {resume_from_checkpoint}: {problem}. Pass a complete checkpoint-N "
                             "folder written by this run to --resume_from_checkpoint, or leave it out to start afresh.")
        return resume_from_checkpoint
    if not resume_from_checkpoint:
        return None
    last = last_complete_checkpoint(output_dir)
    if last is None:
        raise ValueError(f"No complete checkpoint to resume in {output_dir}.")
    return last


def check_resumable(checkpoint: str, signature: dict, output_dir: str) -> None:
    """Refuse to resume `checkpoint` unless the run that wrote it had this `signature`."""
    path = os.path.join(checkpoint, SIGNATURE_FILE)
    if not os.path.exists(path):
        raise ValueError(
            f"Cannot resume {checkpoint}: it has no {SIGNATURE_FILE}, so nothing shows that this run wrote it. To "
            f"start afresh, use another --output_dir or delete the checkpoint-* folders in {output_dir}."
        )
    with open(path) as f:
        saved = json.load(f)
    differences = _differences(saved, signature)
    if differences:
        raise ValueError(
            f"Cannot resume {checkpoint}: it was written by another unlearning run (another model, forget set or "
            f"setting), and resuming would mix the two. Differences: {'; '.join(differences)}. To start afresh, use "
            f"another --output_dir or delete the checkpoint-* folders in {output_dir}; to resume it, rerun with the "
            "checkpoint's settings."
        )


def _differences(saved: dict, signature: dict) -> list[str]:
    """How a checkpoint's saved signature differs from `signature`, setting by setting."""
    # A JSON round trip, so that tuples and lists (and other JSON spellings) compare alike; settings one by one.
    saved, current = _flat(saved), _flat(json.loads(json.dumps(signature)))
    return [
        f"{key}: {saved.get(key)!r} in the checkpoint, {current.get(key)!r} now"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]


def written_by(folder: str, signature: dict) -> bool:
    """Whether `folder` is a complete checkpoint written by a run with this `signature` (this run, or the same
    command before it was interrupted): the only checkpoints a run replaces or rotates out."""
    if checkpoint_problem(folder) is not None:
        return False
    try:
        with open(os.path.join(folder, SIGNATURE_FILE)) as f:
            return not _differences(json.load(f), signature)
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def set_aside(folder: str, why: str) -> str:
    """Rename `folder` out of the checkpoints' names (kept, never resumed or rotated), say so; its new path."""
    aside = f"{folder}.kept-{time.strftime('%Y%m%dT%H%M%S')}"
    os.rename(folder, aside)
    logger.warning(f"Moved {folder} to {aside}: {why}. It is kept for you to inspect or remove; this run writes its "
                   "own checkpoint of that step.")
    return aside


def _flat(signature: dict) -> dict:
    """The signature with its settings at the top level, each under its own name (`settings.learning_rate`)."""
    settings = signature.get("settings")
    flat = {key: value for key, value in signature.items() if key != "settings"}
    if isinstance(settings, dict):
        flat.update({f"settings.{name}": value for name, value in settings.items()})
    elif settings is not None:
        flat["settings"] = settings
    return flat


def staging_folder(output_dir: str) -> str:
    """Where checkpoints are written before they are complete (`Trainer` writes `checkpoint-N` under it)."""
    return work_dir(output_dir)


def clear_staged_checkpoint(output_dir: str, step: int) -> str:
    """An empty staging folder for checkpoint `step` (a kill may have left one behind)."""
    staged = os.path.join(staging_folder(output_dir), f"{PREFIX_CHECKPOINT_DIR}-{step}")
    shutil.rmtree(staged, ignore_errors=True)
    return staged


def publish_checkpoint(staged: str, output_dir: str, signature: dict, save_total_limit: int | None) -> str:
    """Seal the checkpoint written in `staged` (its files' sizes, then the run's signature), rename it into
    `output_dir`, then remove the checkpoints beyond `save_total_limit`; returns its final path."""
    files = {}
    for root, _, names in os.walk(staged):
        for name in names:
            path = os.path.join(root, name)
            files[os.path.relpath(path, staged)] = os.path.getsize(path)
    with open(os.path.join(staged, MANIFEST_FILE), "w") as f:
        json.dump({"files": files}, f, indent=2, sort_keys=True)
    write_signature(staged, signature)
    fsync_tree(staged)
    final = os.path.join(output_dir, os.path.basename(staged))
    if written_by(final, signature):  # the same run's, of the same step (it resumed an earlier checkpoint)
        shutil.rmtree(final)
    elif os.path.lexists(final):  # not this run's: copied in, another run's or incomplete
        problem = checkpoint_problem(final)
        set_aside(final, f"it is not a checkpoint of this run ({problem or 'another run wrote it'})")
    os.rename(staged, final)
    fsync_folder(output_dir)
    rotate_checkpoints(output_dir, save_total_limit, signature)
    remove_work_dir_if_empty(output_dir)
    return final


def rotate_checkpoints(output_dir: str, save_total_limit: int | None, signature: dict | None = None) -> None:
    """Keep the newest `save_total_limit` complete checkpoints of this run (`signature`; all when the limit is None
    or 0) and remove its older ones, only once a newer one is complete. A checkpoint this run did not write (copied
    in, another run's, incomplete) is never removed."""
    ours = [path for _, path in checkpoints_by_step(output_dir)
            if (written_by(path, signature) if signature is not None else checkpoint_problem(path) is None)]
    for path in ours[:-save_total_limit] if save_total_limit else []:
        logger.info(f"Deleting older checkpoint {path} (save_total_limit={save_total_limit}).")
        shutil.rmtree(path, ignore_errors=True)
