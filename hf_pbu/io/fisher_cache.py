"""The Fisher cache's files and the partial sums of an interrupted Fisher, checked before they are used.

Each file is written atomically with, in its safetensors metadata, a sha256 of its tensors, the seconds its
computation took and what it was computed for (its key: the weights, the forget data and sample size, the estimator;
`hf_pbu.objective.fisher.fisher_cache_key`). Read back, a file must parse, record the key it is read for (a valid
file of another key, renamed or copied in, is not this Fisher), hold the expected tensors with their shapes, finite
and non-negative values (squares and counts), and match its checksum; otherwise it is set aside (renamed
`<name>.bad-<time>`, kept for inspection) with a warning that names it, and the Fisher is computed again: a
truncated, random or corrupted file never reaches the penalty, and never ends a run with a traceback.
"""

import contextlib
import hashlib
import json
import math
import os
import time

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers.utils import logging

from .atomic import fsync_folder, write_error, write_failure

logger = logging.get_logger(__name__)

FORMAT = "hf_pbu.fisher/1"
KEY_FIELD = "computed_for"  # the metadata entry holding the key, as JSON


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the tensors' names, dtypes, shapes and bytes, in name order."""
    hasher = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        hasher.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def save_checked(path: str, tensors: dict[str, torch.Tensor], seconds: float,
                 key: dict[str, str] | None = None) -> None:
    """Write `tensors` to `path` atomically, with their checksum, the `seconds` they took to compute and the `key`
    they were computed for."""
    tensors = {name: value.detach().cpu().contiguous() for name, value in tensors.items()}
    metadata = {"format": FORMAT, "sha256": tensors_sha256(tensors), "seconds": repr(float(seconds))}
    if key is not None:
        metadata[KEY_FIELD] = json.dumps(key, sort_keys=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        save_file(tensors, temporary, metadata=metadata)
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
        fsync_folder(os.path.dirname(os.path.abspath(path)))
    except Exception as err:
        code = write_failure(err, temporary)  # measured before the partial file goes
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if code is not None:
            raise write_error(err, os.path.dirname(os.path.abspath(path)), os.path.basename(path), code) from err
        raise


def key_problem(metadata: dict[str, str], key: dict[str, str]) -> str | None:
    """Why a file whose `metadata` is this is not the one computed for `key`, or None."""
    try:
        recorded = json.loads(metadata[KEY_FIELD])
        differ = sorted(name for name in set(key) | set(recorded) if str(recorded.get(name)) != str(key.get(name)))
    except (KeyError, ValueError, TypeError, AttributeError):
        return "it does not record what it was computed for (written by an earlier version or another tool)"
    if differ:
        differ = [name for name in differ if name != "key"] or differ  # the key is a hash of the others
        return (f"it was computed for another {', '.join(differ)} than this run's, and stored under this run's "
                "name (renamed or copied in)")
    return None


def _problem(tensors: dict[str, torch.Tensor], metadata: dict[str, str], shapes: dict[str, tuple] | None,
             key: dict[str, str] | None = None) -> str | None:
    """What makes these tensors unusable, or None."""
    if metadata.get("format") != FORMAT or "sha256" not in metadata:
        return "it carries no hf_pbu checksum (written by another version or tool)"
    if key is not None and (problem := key_problem(metadata, key)):
        return problem
    if shapes is not None:
        missing, extra = sorted(set(shapes) - set(tensors)), sorted(set(tensors) - set(shapes))
        if missing or extra:
            return f"it does not hold this model's parameters (missing {missing[:3]}, unexpected {extra[:3]})"
        wrong = [name for name in shapes if tuple(tensors[name].shape) != tuple(shapes[name])]
        if wrong:
            return f"{wrong[0]} has shape {tuple(tensors[wrong[0]].shape)}, not {tuple(shapes[wrong[0]])}"
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return f"{name} holds non-finite values"
        if (tensor < 0).any():
            return f"{name} holds negative values (a Fisher and its sums are sums of squares)"
    if tensors_sha256(tensors) != metadata["sha256"]:
        return "its values do not match the checksum written with them"
    try:
        seconds = float(metadata.get("seconds", "nan"))
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        return "its recorded computation time is not a number of seconds"
    return None


def set_aside(path: str, problem: str, what: str) -> None:
    """Rename a bad file out of the way (kept for inspection) and say so."""
    aside = f"{path}.bad-{time.strftime('%Y%m%dT%H%M%S')}"
    try:
        os.replace(path, aside)
    except FileNotFoundError:  # another process set it aside first
        return
    except OSError as err:
        aside = f"nowhere ({err}): remove it"
    logger.warning(f"Not using the {what} {path}: {problem}. Moved it to {aside}; computing the Fisher again.")


def load_checked(path: str, shapes: dict[str, tuple] | None, what: str,
                 key: dict[str, str] | None = None) -> tuple[dict[str, torch.Tensor], float] | None:
    """The tensors of `path` (on CPU) and the seconds they took to compute, when the file exists and is sound
    (`shapes`: the names and shapes it must hold; `key`: what it must record it was computed for); None when it is
    missing or was set aside."""
    if not os.path.exists(path):
        return None
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as err:  # truncated or not a safetensors file: safetensors raises its own error types
        problem = f"it cannot be read ({type(err).__name__}: {str(err)[:200]})"
    else:
        problem = _problem(tensors, metadata, shapes, key)
    if problem is not None:
        set_aside(path, problem, what)
        return None
    return tensors, float(metadata["seconds"])


class PartialSums:
    """One rank's running Fisher sums, saved while they grow so that an interrupted Fisher resumes after the batches
    they hold; `seconds` adds the time spent before the interruption to this process's."""

    def __init__(self, path: str, key: dict[str, str] | None = None):
        self.path = path
        self.key = key  # what the sums are computed for: recorded with them, required of the file resumed
        self.earlier_seconds = 0.0
        self.resumed = False
        self._start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.earlier_seconds + time.perf_counter() - self._start

    def load_into(self, state: dict[str, torch.Tensor]) -> int:
        """Fill `state` from the saved sums, if sound; the number of batches they hold (0 to start afresh)."""
        shapes = {**{key: tuple(value.shape) for key, value in state.items()}, "batches": ()}
        loaded = load_checked(self.path, shapes, "partial Fisher", self.key)
        if loaded is None:
            return 0
        saved, self.earlier_seconds = loaded
        for key, value in state.items():
            value.copy_(saved[key])
        self.resumed = True
        logger.info(f"Resuming the Fisher from {self.path} after {int(saved['batches'])} batches.")
        return int(saved["batches"])

    def save(self, state: dict[str, torch.Tensor], batches: int) -> None:
        """Write the sums after `batches` batches; a failed write (a full disk) only costs the resume point."""
        try:
            save_checked(self.path, {**state, "batches": torch.tensor(batches)}, self.seconds, self.key)
        except OSError as err:
            logger.warning(f"Could not save the Fisher's partial sums: {err}")

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)
