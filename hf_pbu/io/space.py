"""Whether a run's files fit in its output folder, checked once the model is loaded and before any work.

A disk that fills up mid-run costs the Fisher and the steps trained so far (the files are left complete and the
rerun resumes, `hf_pbu.io.atomic`), so the command line first compares an estimate of what the run writes with the
free space of `--output_dir` and refuses, with the figures, a run that cannot fit (`check_free_space`).
"""

import math
import os

from torch import nn

from .atomic import free_bytes

# The card, the results, the chart and the run's small files (trainer state, scheduler, RNG state, signatures):
# well under this, with room left for the filesystem's own metadata.
SMALL_FILES_BYTES = 8 * 2**20


def _size(count: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count} bytes"  # unreachable


def checkpoints_at_once(config) -> int:
    """How many checkpoints the output folder holds at most while the run writes them: none without checkpoints;
    `save_total_limit` + 1 (a new checkpoint is complete before the oldest goes); with no limit, every checkpoint of
    the step budget (`max_steps`, else `min_step_budget`, the least the budget can be)."""
    if str(getattr(config.save_strategy, "value", config.save_strategy)) == "no":
        return 0
    if config.save_total_limit:
        return config.save_total_limit + 1
    if config.save_steps < 1:  # a fraction of the budget
        return math.ceil(1 / config.save_steps)
    budget = config.max_steps if config.max_steps > 0 else config.min_step_budget
    return max(1, math.ceil(budget / config.save_steps))


def bytes_to_write(model: nn.Module, config) -> dict[str, int]:
    """An upper estimate of what a run writes to `output_dir`, by part: the unlearned model (every tensor of its
    state dict), the checkpoints kept at once (`checkpoints_at_once`), each the model's weights plus the optimizer's
    state (Adam's two moments: twice the trainable parameters' bytes), and `SMALL_FILES_BYTES` for the rest."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    checkpoint = weights + 2 * trainable
    count = checkpoints_at_once(config)
    return {"model": weights, "checkpoints": count * checkpoint, "checkpoint": checkpoint, "count": count,
            "small files": SMALL_FILES_BYTES}


def check_free_space(model: nn.Module, config) -> None:
    """Refuse, with the figures, a run whose files (`bytes_to_write`) do not fit in the free space of
    `config.output_dir`'s filesystem. Raises `ValueError`."""
    parts = bytes_to_write(model, config)
    needed = parts["model"] + parts["checkpoints"] + parts["small files"]
    free = free_bytes(config.output_dir)
    if free is None or free >= needed:
        return
    folder = os.path.abspath(config.output_dir)
    checkpoints = (f", {parts['count']} checkpoint(s) kept at once of {_size(parts['checkpoint'])} each (weights and "
                   f"optimizer state)" if parts["count"] else "")
    raise ValueError(
        f"Not enough free space for this run in {folder}: it writes about {_size(needed)} (the model "
        f"{_size(parts['model'])}{checkpoints}, the card and results {_size(parts['small files'])}) and "
        f"{_size(free)} are free. Free some space, choose another --output_dir, or keep fewer checkpoints "
        "(--save_total_limit 1, or --save_strategy no)."
    )
