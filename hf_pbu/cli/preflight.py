"""What the command line checks before it loads a model or data: a mistake found here costs nothing.

(Bad values are refused earlier, when the arguments are parsed: `hf_pbu.argument_checks`.) The output folder must
be a writable folder, `--push_to_hub` needs a token, the Hub online and a valid repository id,
`--resume_from_checkpoint` must name a complete checkpoint, the output folder must not be the input model's own folder
(the run would write over the model it unlearns) nor hold a finished run (its results would be overwritten, or its
last checkpoint resumed under other settings), and no other run may be writing to the same output folder: its lock
is taken here and held for the whole run (`hf_pbu.io.output_lock`). The checkpoint to resume is resolved here, once.
A run that ends having written nothing (refused here, or once the model is loaded, e.g. by `check_space`) leaves the
output folder as it found it: no folder it created, no lock files of its own.
"""

import contextlib
import os
import tempfile
from collections.abc import Iterator

from accelerate.utils import broadcast_object_list
from huggingface_hub import constants, get_token
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers.utils import logging

from ..config import PBUConfig
from ..io.atomic import WORK_DIR
from ..io.checkpoints import checkpoint_to_resume, last_complete_checkpoint
from ..io.model_card import hub_repo_id
from ..io.output_lock import LOCK_FILE, OWNER_FILE, OutputFolderInUseError, OutputFolderLock
from ..io.publish import TOKEN_FIX
from ..io.space import check_free_space
from ..models import parse_model_id
from ..results import RESULTS_FILE

logger = logging.get_logger(__name__)


def check_output_dir(output_dir: str) -> None:
    """`output_dir` is a folder this process can write into (created if missing)."""
    path = os.path.abspath(output_dir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--output_dir {path} is a file, not a folder: choose another --output_dir.")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ValueError(f"--output_dir {path} is not writable ({err.strerror or err}): choose another --output_dir "
                         "or make it writable.") from None


def check_output_is_not_the_model(output_dir: str, model_id: str | None) -> None:
    """The output folder is not the folder the model is loaded from (`--model_id model_a`, `local-dir:model_a`): the
    unlearned weights, card and results would replace the user's original model."""
    if model_id is None:
        return
    kind, location, _ = parse_model_id(model_id)
    if kind != "local-dir" or not os.path.isdir(location) or not os.path.isdir(output_dir):
        return
    if os.path.samefile(location, output_dir):
        raise ValueError(f"--output_dir {os.path.abspath(output_dir)} is the folder of the input model "
                         f"(--model_id {model_id}): the run would write the unlearned model over the original one. "
                         "Choose another --output_dir.")


def check_not_finished(output_dir: str) -> None:
    """The output folder holds no finished run (its `unlearning_results.json`, written last): a rerun would overwrite
    it, or resume its last checkpoint although the run is complete (at the old settings, whatever the new ones say)."""
    if os.path.isfile(os.path.join(output_dir, RESULTS_FILE)):
        raise ValueError(f"--output_dir {os.path.abspath(output_dir)} holds a finished run (its unlearned model and "
                         f"{RESULTS_FILE}): it is complete and is not resumed. To run again (for instance with another "
                         "value of a flag), choose another --output_dir, or remove that folder.")


def check_push_prerequisites(config: PBUConfig) -> None:
    """With `--push_to_hub`: the Hub reachable in principle (not offline), a token, a valid repository id."""
    if not config.push_to_hub:
        return
    if constants.HF_HUB_OFFLINE:
        raise ValueError("--push_to_hub cannot reach the Hub: HF_HUB_OFFLINE is set. Unset it, or leave out "
                         "--push_to_hub and push the saved folder later with `hf upload`.")
    if not (config.hub_token or get_token()):
        raise ValueError(f"--push_to_hub needs a Hugging Face token with write access: {TOKEN_FIX}.")
    repo_id = hub_repo_id(config.output_dir, config)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        flag = "--hub_model_id" if config.hub_model_id else "--output_dir's folder name (the repository id by default)"
        raise ValueError(f"{flag} gives {repo_id!r}, not a valid Hub repository id: {err} Pass --hub_model_id "
                         "<namespace>/<name>.") from None


def checkpoint_to_carry_on(config: PBUConfig) -> str | None:
    """The checkpoint the run resumes: `--resume_from_checkpoint`, which must be complete, else the last complete one
    in `output_dir` (an incomplete one, left by a kill or a full disk, is reported and skipped), so that an
    interrupted run carries on where it stopped; None to start afresh. `PBUTrainer.train` refuses it if another run
    (model, forget data, settings) wrote it."""
    if isinstance(config.resume_from_checkpoint, str):
        return checkpoint_to_resume(config.resume_from_checkpoint, config.output_dir)
    last = last_complete_checkpoint(config.output_dir)
    if last is not None:
        logger.warning(f"Resuming the interrupted run from {last}; to start afresh, use another --output_dir or delete "
                       "the checkpoint-* folders in it.")
    return last


def _agree(config: PBUConfig, check) -> None:
    """Run `check` on the main process and raise its `ValueError` on every process, so that all stop together."""
    error = None
    if config.process_index == 0:
        try:
            check()
        except ValueError as err:
            error = err
    if config.world_size > 1:
        verdict = [None if error is None else str(error)]
        broadcast_object_list(verdict)
        if verdict[0] is not None and error is None:
            error = ValueError(verdict[0])
    if error is not None:
        raise error


def check_space(model, config: PBUConfig) -> None:
    """Refuse a run whose files do not fit in the output folder's free space (`hf_pbu.io.space.check_free_space`),
    before any work: called once the model is loaded, since the estimate is the model's size."""
    _agree(config, lambda: check_free_space(model, config))


class _Untouched:
    """What the output folder held before the run, to leave it so if the run writes nothing."""

    OURS = (LOCK_FILE, OWNER_FILE, WORK_DIR)

    def __init__(self, output_dir: str):
        self.folder = os.path.abspath(output_dir)
        self.existed = os.path.isdir(self.folder)
        self.before = set(os.listdir(self.folder)) if self.existed else set()

    def restore_if_nothing_written(self, lock: OutputFolderLock | None) -> None:
        """If the run wrote nothing, remove the lock files it added (while still holding the lock) and the folder if
        it created it; then release the lock."""
        try:
            now = set(os.listdir(self.folder)) if os.path.isdir(self.folder) else set()
            added = now - self.before
            work = os.path.join(self.folder, WORK_DIR)
            if lock is None or not added <= set(self.OURS) or (WORK_DIR in added and os.listdir(work)):
                return
            for name in sorted(added - {WORK_DIR}):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.folder, name))
            with contextlib.suppress(OSError):
                os.rmdir(work)
        finally:
            if lock is not None:
                lock.release()
        if not self.existed:
            with contextlib.suppress(OSError):  # not empty: another run has started writing into it meanwhile
                os.rmdir(self.folder)


def _check_and_lock(config: PBUConfig, model_id: str | None) -> tuple[OutputFolderLock, str | None]:
    check_output_is_not_the_model(config.output_dir, model_id)
    check_not_finished(config.output_dir)
    check_push_prerequisites(config)
    check_output_dir(config.output_dir)
    checkpoint = checkpoint_to_carry_on(config)
    return OutputFolderLock(config.output_dir).acquire(), checkpoint


@contextlib.contextmanager
def preflight(config: PBUConfig, model_id: str | None = None) -> Iterator[str | None]:
    """Run the checks on the main process (the others get its verdict, so that all stop together), hold the output
    folder's lock until the block ends, and give every process the checkpoint to resume (`checkpoint_to_carry_on`),
    resolved once. `model_id`: the model the run loads, whose folder must not be the output folder. Raises
    `ValueError` or `OutputFolderInUseError`."""
    lock, error, checkpoint, untouched = None, None, None, None
    if config.process_index == 0:
        untouched = _Untouched(config.output_dir) if not os.path.isfile(config.output_dir) else None
        try:
            lock, checkpoint = _check_and_lock(config, model_id)
        except (ValueError, OutputFolderInUseError) as err:
            error = err
    if config.world_size > 1:
        verdict = [None if error is None else str(error), checkpoint]
        broadcast_object_list(verdict)
        if verdict[0] is not None and error is None:
            error = ValueError(verdict[0])
        checkpoint = verdict[1]
    if error is not None:
        if untouched is not None and not untouched.existed:
            with contextlib.suppress(OSError):  # the folder check created it
                os.rmdir(untouched.folder)
        raise error
    try:
        yield checkpoint
    finally:
        if untouched is not None:
            untouched.restore_if_nothing_written(lock)
        elif lock is not None:
            lock.release()
