"""The command line under faults, as a user meets them: a kill while a checkpoint is written, a full disk during a
checkpoint, at the final save and at the results, a corrupted Fisher cache, two runs on one folder. Each test
asserts the exit, what is on disk, and that the rerun of the same command ends with the model and results of an
uninterrupted run."""

import contextlib
import errno
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import torch
from conftest import TINY_REPOS
from safetensors.torch import load_file
from test_fisher_cache_faults import overwrite_values
from test_unlearn_script import FAST, _script, offline, one_thread  # noqa: F401 (fixtures)
from transformers import Trainer

import hf_pbu.cli.unlearn
from hf_pbu.io.atomic import WORK_DIR
from hf_pbu.io.checkpoints import MANIFEST_FILE, SIGNATURE_FILE
from hf_pbu.io.output_lock import LOCK_FILE, OWNER_FILE, OutputFolderInUseError, OutputFolderLock
from hf_pbu.results import RESULTS_FILE

# Four steps, a checkpoint after each (the last one kept): a kill or a full disk can hit checkpoint 3 of 4.
pytestmark = pytest.mark.usefixtures("offline")  # the tiny Hub model from an HF cache, HF_HUB_OFFLINE=1
RUN = [*FAST, "--max_steps", "4", "--save_steps", "1", "--forget_class", "digit_1"]
MEASURED = ("forget_classes", "steps", "stopped_at_step", "before", "after", "forget_train_samples")


def argv(tiny_imagefolder, output_dir, *extra) -> list[str]:
    return ["--model_id", TINY_REPOS["timm"], "--dataset_name", "imagefolder", "--dataset_dir", tiny_imagefolder,
            "--output_dir", str(output_dir), "--fisher_cache_dir", "none", *RUN, *extra]


def outcome(output_dir) -> tuple[dict, dict[str, torch.Tensor]]:
    """What a run produced: its measured results and its weights."""
    with open(os.path.join(output_dir, RESULTS_FILE)) as f:
        results = json.load(f)
    return {key: results[key] for key in MEASURED}, load_file(os.path.join(output_dir, "model.safetensors"))


def assert_same_outcome(output_dir, reference_dir) -> dict:
    results, weights = outcome(output_dir)
    expected, expected_weights = outcome(reference_dir)
    assert results == expected
    assert weights.keys() == expected_weights.keys()
    assert all(torch.equal(weights[name], expected_weights[name]) for name in weights)  # bit for bit
    with open(os.path.join(output_dir, RESULTS_FILE)) as f:
        return json.load(f)


_REFERENCES: dict[tuple, str] = {}


def reference_run(tiny_imagefolder, tmp_path_factory, *extra) -> str:
    """The folder of an uninterrupted run of the same command (made once per session and set of arguments)."""
    if extra not in _REFERENCES:
        folder = tmp_path_factory.mktemp("reference") / "out"
        _script().main(argv(tiny_imagefolder, folder, *extra))
        _REFERENCES[extra] = str(folder)
    return _REFERENCES[extra]


def files(output_dir) -> set[str]:
    """Every file under `output_dir` (relative paths), working files included."""
    return {os.path.relpath(os.path.join(root, name), output_dir)
            for root, _, names in os.walk(output_dir) for name in names}


def assert_no_empty_or_temporary_files(output_dir) -> None:
    for name in files(output_dir):
        assert os.path.getsize(os.path.join(output_dir, name)) > 0 or name.endswith(".lock"), name
        assert not name.endswith(".tmp") and not name.startswith(WORK_DIR), name


@contextlib.contextmanager
def disk_full_when_flushing(monkeypatch, name: str) -> Iterator[None]:
    """The disk is full when the atomic write of the output file `name` is flushed (its temporary file is
    `.<name>...`), as `ENOSPC` from `os.fsync`; every other write goes through."""
    fsync = os.fsync

    def full_for_that_file(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{name}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", full_for_that_file)
    try:
        yield
    finally:
        monkeypatch.setattr(os, "fsync", fsync)


def error_of(arguments: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        _script().main(arguments)
    message = str(exit_info.value.code)
    assert message.startswith("error: "), message
    return message


class SimulatedKill(BaseException):
    """Raised mid-write like a SIGKILL: no `except Exception` (so no clean-up of ours) sees it."""


def test_a_kill_while_a_checkpoint_is_written_leaves_the_last_complete_one(
    tiny_imagefolder, tmp_path, tmp_path_factory, monkeypatch, caplog
):
    out = tmp_path / "out"
    save_rng_state = Trainer._save_rng_state

    def killed_at_checkpoint_3(self, output_dir):
        if output_dir.endswith("checkpoint-3"):  # model, optimizer and scheduler written; RNG state and the rest not
            raise SimulatedKill
        save_rng_state(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", killed_at_checkpoint_3)
    with pytest.raises(SimulatedKill):
        _script().main(argv(tiny_imagefolder, out))
    monkeypatch.setattr(Trainer, "_save_rng_state", save_rng_state)

    # The half-written checkpoint is only in the staging area; the last checkpoint is the complete checkpoint-2.
    staged = out / WORK_DIR / "checkpoint-3"
    assert (staged / "optimizer.pt").is_file() and not (staged / SIGNATURE_FILE).exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert (out / "checkpoint-2" / SIGNATURE_FILE).is_file() and (out / "checkpoint-2" / MANIFEST_FILE).is_file()
    assert not (out / "model.safetensors").exists()
    # What a writer without staging leaves (the interrupted folder in place), and a checkpoint copied in part:
    # both are reported and skipped.
    shutil.copytree(staged, out / "checkpoint-3")
    shutil.copytree(out / "checkpoint-2", out / "checkpoint-4")
    os.truncate(out / "checkpoint-4" / "model.safetensors", 1000)

    with caplog.at_level(logging.WARNING):
        _script().main(argv(tiny_imagefolder, out))

    skipped = "Skipping {}: it is not a complete checkpoint ({}"
    assert skipped.format(out / "checkpoint-4", "model.safetensors holds 1000 bytes") in caplog.text
    assert skipped.format(out / "checkpoint-3", f"it has no {MANIFEST_FILE}") in caplog.text
    assert f"Resuming the interrupted run from {out / 'checkpoint-2'}" in caplog.text
    results = assert_same_outcome(out, reference_run(tiny_imagefolder, tmp_path_factory))
    assert results["resumed_from_step"] == 2 and 0 < results["resumed_seconds"] < results["unlearn_seconds"]
    assert "resumed from the checkpoint of step 2" in (out / "README.md").read_text()
    # The two folders this run did not write are kept under other names, not deleted when it wrote its own.
    assert sorted(p.name.split(".kept-")[0] for p in out.glob("checkpoint-*")) == [
        "checkpoint-3", "checkpoint-4", "checkpoint-4"]
    assert sorted(p.name for p in out.glob("checkpoint-*") if ".kept-" not in p.name) == ["checkpoint-4"]
    (kept,) = out.glob("checkpoint-4.kept-*")
    assert (kept / "model.safetensors").stat().st_size == 1000
    assert f"Moved {out / 'checkpoint-3'} to {out / 'checkpoint-3'}.kept-" in caplog.text
    assert_no_empty_or_temporary_files(out)


def test_a_checkpoint_copied_in_is_refused_or_kept_never_deleted(tiny_imagefolder, tmp_path, tmp_path_factory, caplog):
    """Another run's complete checkpoint (other forget classes) copied into the folder as checkpoint-4: refused as a
    resume point, left as it is. The same copy without hf_pbu's files (a plain `Trainer` checkpoint) is skipped, and
    when the run writes its own checkpoint-4 the copy is moved aside whole, not deleted; an older one (checkpoint-0)
    is not rotated out with the run's own checkpoints."""
    other, out = tmp_path / "other", tmp_path / "out"
    _script().main([arg if arg != "digit_1" else "digit_2" for arg in argv(tiny_imagefolder, other)])
    (theirs,) = other.glob("checkpoint-*")  # its last (that run may stop before step 4)
    out.mkdir()
    shutil.copytree(theirs, out / "checkpoint-4")
    message = error_of(argv(tiny_imagefolder, out))
    assert f"Cannot resume {out / 'checkpoint-4'}: it was written by another unlearning run" in message
    assert files(out / "checkpoint-4") == files(theirs)

    for name in (SIGNATURE_FILE, MANIFEST_FILE):
        (out / "checkpoint-4" / name).unlink()
    shutil.copytree(out / "checkpoint-4", out / "checkpoint-0")
    copied = {name: (out / "checkpoint-4" / name).read_bytes() for name in files(out / "checkpoint-4")}
    with caplog.at_level(logging.WARNING):
        _script().main(argv(tiny_imagefolder, out))

    (kept,) = out.glob("checkpoint-4.kept-*")
    assert {name: (kept / name).read_bytes() for name in files(kept)} == copied  # whole, as it was copied in
    assert f"Moved {out / 'checkpoint-4'} to {kept}: it is not a checkpoint of this run" in caplog.text
    assert sorted(p.name for p in out.glob("checkpoint-*") if ".kept-" not in p.name) == [
        "checkpoint-0", "checkpoint-4"]
    assert_same_outcome(out, reference_run(tiny_imagefolder, tmp_path_factory))


def interrupted_after_one_step(tiny_imagefolder, out) -> None:
    """A run of one step that left its checkpoint-1 and no results, as a run killed before its end would: the
    folder of an interrupted run, which may be resumed (a finished run's folder is not resumed at all)."""
    try:  # whether one step already forgot (exit 0) or not (exit 1) does not matter here
        _script().main(argv(tiny_imagefolder, out, "--max_steps", "1"))
    except SystemExit as exit_info:
        assert "Not forgotten" in str(exit_info.code)
    (out / RESULTS_FILE).unlink()


def test_a_checkpoint_without_its_signature_is_refused(tiny_imagefolder, tmp_path):
    out = tmp_path / "out"
    interrupted_after_one_step(tiny_imagefolder, out)
    (out / "checkpoint-1" / SIGNATURE_FILE).unlink()
    message = error_of(argv(tiny_imagefolder, out, "--resume_from_checkpoint", str(out / "checkpoint-1")))
    assert f"Cannot resume {out / 'checkpoint-1'}: it has no {SIGNATURE_FILE}" in message


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(
    tiny_imagefolder, tmp_path, tmp_path_factory, monkeypatch
):
    out = tmp_path / "out"
    save = torch.save

    def disk_fills_at_checkpoint_3(obj, f, *args, **kwargs):
        if str(f).endswith(os.path.join("checkpoint-3", "optimizer.pt")):
            with open(f, "wb") as partial:
                partial.write(b"\0" * 4096)  # what fitted
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills_at_checkpoint_3)
    message = error_of(argv(tiny_imagefolder, out))
    monkeypatch.setattr(torch, "save", save)

    assert message == (f"error: Could not write checkpoint-3 to {out} (the disk is full); everything it holds is "
                       "complete: checkpoint-2. Free some space (or choose another folder) and run the same command "
                       "again.")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert_no_empty_or_temporary_files(out)
    _script().main(argv(tiny_imagefolder, out))
    assert_same_outcome(out, reference_run(tiny_imagefolder, tmp_path_factory))


def test_a_full_disk_inside_torch_save_whatever_its_wording_gives_the_full_disk_message(
    tiny_imagefolder, tmp_path, tmp_path_factory, monkeypatch
):
    """torch.save's C++ writer reports a full disk as a RuntimeError ("unexpected pos"), with no errno: the
    filesystem's free space (0 once it filled) makes it a full disk, not a traceback."""
    out = tmp_path / "out"
    save, disk_usage = torch.save, shutil.disk_usage
    full = []

    def disk_fills_at_checkpoint_3(obj, f, *args, **kwargs):
        if str(f).endswith(os.path.join("checkpoint-3", "optimizer.pt")):
            with open(f, "wb") as partial:
                partial.write(b"\0" * 4096)  # what fitted
            full.append(True)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        return save(obj, f, *args, **kwargs)

    def usage(path):
        real = disk_usage(path)
        return real._replace(used=real.total, free=0) if full else real

    monkeypatch.setattr(torch, "save", disk_fills_at_checkpoint_3)
    monkeypatch.setattr(shutil, "disk_usage", usage)
    message = error_of(argv(tiny_imagefolder, out))
    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(shutil, "disk_usage", disk_usage)

    assert message == (f"error: Could not write checkpoint-3 to {out} (the disk is full); everything it holds is "
                       "complete: checkpoint-2. Free some space (or choose another folder) and run the same command "
                       "again.")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (out / WORK_DIR).exists()
    assert_no_empty_or_temporary_files(out)
    _script().main(argv(tiny_imagefolder, out))
    assert_same_outcome(out, reference_run(tiny_imagefolder, tmp_path_factory))


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """This process may not write files beyond `limit` bytes (RLIMIT_FSIZE, enforced by the kernel like a full
    disk: the write fails with EFBIG, whoever makes it, Python, safetensors' Rust or torch)."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of the process being killed
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_a_full_disk_at_the_final_save_names_the_folder_and_leaves_no_broken_file(
    tiny_imagefolder, tmp_path, tmp_path_factory
):
    """Files may not exceed 100 kB: the chart fits, the model (110 kB) does not."""
    out = tmp_path / "out"
    quiet = ("--save_strategy", "no", "--log_level", "warning")
    with file_size_limit(100 * 1024):
        message = error_of(argv(tiny_imagefolder, out, *quiet))

    assert message.startswith(f"error: Could not write the model to {out} (a file reached the size limit"), message
    assert not {"model.safetensors", "config.json", RESULTS_FILE, "README.md"} & files(out)
    assert_no_empty_or_temporary_files(out)
    _script().main(argv(tiny_imagefolder, out, *quiet))
    assert_same_outcome(out, reference_run(tiny_imagefolder, tmp_path_factory, *quiet))


def test_a_file_size_limit_inside_torch_save_gives_the_file_size_message(tiny_imagefolder, tmp_path, tmp_path_factory):
    """`ulimit -f` of 150 kB: a checkpoint's model.safetensors (110 kB) fits, its optimizer.pt does not, and the real
    torch.save fails with a RuntimeError that names no errno; the file that reached the limit says why."""
    out = tmp_path / "out"
    with file_size_limit(150 * 1024):
        message = error_of(argv(tiny_imagefolder, out))

    assert message == (f"error: Could not write checkpoint-1 to {out} (a file reached the size limit of this "
                       "filesystem or process); it holds nothing. Free some space (or choose another folder) and run "
                       "the same command again.")
    assert not list(out.glob("checkpoint-*")) and not (out / WORK_DIR).exists()
    assert_no_empty_or_temporary_files(out)
    _script().main(argv(tiny_imagefolder, out))
    assert_same_outcome(out, reference_run(tiny_imagefolder, tmp_path_factory))


def test_room_for_the_model_only_keeps_the_model_and_no_empty_results(
    tiny_imagefolder, tmp_path, tmp_path_factory, monkeypatch
):
    """The disk fills after the model: ENOSPC when the results are flushed (where delayed allocation reports it)."""
    out = tmp_path / "out"
    with disk_full_when_flushing(monkeypatch, RESULTS_FILE):
        message = error_of(argv(tiny_imagefolder, out))

    assert message.startswith(f"error: Could not write {RESULTS_FILE} to {out} (the disk is full); everything it "
                              "holds is complete: checkpoint-4, config.json, model.safetensors")
    assert {"model.safetensors", "config.json"} <= files(out) and not {RESULTS_FILE, "README.md"} & files(out)
    assert_no_empty_or_temporary_files(out)
    reference = reference_run(tiny_imagefolder, tmp_path_factory)
    kept, expected = (load_file(os.path.join(folder, "model.safetensors")) for folder in (out, reference))
    assert all(torch.equal(kept[name], expected[name]) for name in expected)  # the model that was saved is whole
    _script().main(argv(tiny_imagefolder, out))  # resumes checkpoint-4: nothing left to train
    assert_same_outcome(out, reference)


def test_a_full_disk_at_the_chart_gives_the_full_disk_message_not_evidence(tiny_imagefolder, tmp_path, monkeypatch):
    """The per-class chart (written by the evidence step, which runs without --evidence too) hits a full disk, the
    card still fits: the exit names the folder and the fix of a full disk, not "rerun without --evidence"."""
    out = tmp_path / "out"
    with disk_full_when_flushing(monkeypatch, "per_class_accuracy.png"):
        message = error_of(argv(tiny_imagefolder, out))

    assert message.startswith(f"error: The evidence step could not write its files: Could not write "
                              f"per_class_accuracy.png to {out} (the disk is full); everything it holds is complete: "
                              "checkpoint-4, config.json, model.safetensors"), message
    assert "Free some space (or choose another folder) and run the same command again." in message
    assert "--evidence" not in message and "\n" not in message
    assert {"model.safetensors", RESULTS_FILE, "README.md"} <= files(out) and "per_class_accuracy.png" not in files(out)
    assert_no_empty_or_temporary_files(out)


def test_a_run_that_cannot_fit_in_the_free_space_is_refused_before_any_work(tiny_imagefolder, tmp_path, monkeypatch):
    """1 MB free where the run writes the model (103.5 kB of tensors), two checkpoints of its weights and Adam's two
    moments (305 kB each) and the card and results: refused with the figures once the model is loaded, before the
    data, the Fisher or any step; no output folder is left behind."""
    out = tmp_path / "out"
    disk_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: disk_usage(path)._replace(free=10**6))
    monkeypatch.setattr(hf_pbu.cli.unlearn, "load_unlearning_splits",
                        lambda *a, **k: pytest.fail("the data was loaded"))
    message = error_of(argv(tiny_imagefolder, out))
    assert message == (
        f"error: Not enough free space for this run in {out}: it writes about 9.1 MB (the model 103.5 kB, 2 "
        "checkpoint(s) kept at once of 305.2 kB each (weights and optimizer state), the card and results 8.4 MB) and "
        "1.0 MB are free. Free some space, choose another --output_dir, or keep fewer checkpoints (--save_total_limit "
        "1, or --save_strategy no).")
    assert not out.exists()
    # Without checkpoints and with room for the model and the small files, it fits.
    monkeypatch.setattr(shutil, "disk_usage", lambda path: disk_usage(path)._replace(free=9 * 10**6))
    monkeypatch.setattr(hf_pbu.cli.unlearn, "load_unlearning_splits", lambda *a, **k: pytest.fail("fits"))
    with pytest.raises(pytest.fail.Exception, match="fits"):
        _script().main(argv(tiny_imagefolder, out, "--save_strategy", "no"))
    assert not out.exists()  # a run that wrote nothing (here: stopped while loading the data) leaves no folder


def test_a_refused_run_leaves_an_existing_folder_as_it_was(tiny_imagefolder, tmp_path):
    """An unknown class, found once the model is loaded: the folder the user made holds only their file again."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    message = error_of([arg if arg != "digit_1" else "digit_9" for arg in argv(tiny_imagefolder, out)])
    assert "digit_9" in message
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    fresh = tmp_path / "fresh"
    error_of([arg if arg != "digit_1" else "digit_9" for arg in argv(tiny_imagefolder, fresh)])
    assert not fresh.exists()


def test_a_corrupted_fisher_cache_is_set_aside_and_the_run_matches_a_clean_one(
    tiny_imagefolder, tmp_path, caplog
):
    cache = tmp_path / "fisher"
    with_cache = ("--fisher_cache_dir", str(cache))
    _script().main(argv(tiny_imagefolder, tmp_path / "first", *with_cache))
    (cached,) = cache.glob("fisher-*.safetensors")
    overwrite_values(str(cached), "fc.weight", float("nan"))  # header intact, values NaN

    with caplog.at_level(logging.WARNING):
        _script().main(argv(tiny_imagefolder, tmp_path / "second", *with_cache))

    assert f"Not using the Fisher cache file {cached}: fc.weight holds non-finite values" in caplog.text
    second = assert_same_outcome(tmp_path / "second", tmp_path / "first")
    assert second["fisher_source"] == "computed" and len(list(cache.glob("*.bad-*"))) == 1
    # The cache was written again, sound: the next run reads it, and reports the time it took to compute.
    _script().main(argv(tiny_imagefolder, tmp_path / "third", *with_cache))
    third = assert_same_outcome(tmp_path / "third", tmp_path / "first")
    assert third["fisher_source"] == "cached" and third["fisher_seconds"] == second["fisher_seconds"] > 0
    card = (tmp_path / "third" / "README.md").read_text()
    assert f"Fisher diagonal: {third['fisher_seconds']:.1f} s (read from the cache; the time it took" in card


def test_a_sound_fisher_of_another_class_renamed_to_this_runs_key_is_set_aside(tiny_imagefolder, tmp_path, caplog):
    """digit_2's Fisher stored under digit_1's file name: valid in itself, but it records the forget data it was
    computed for, so the digit_1 run sets it aside, computes its own and ends with the model of a clean run."""
    cache = tmp_path / "fisher"
    with_cache = ("--fisher_cache_dir", str(cache))
    _script().main(argv(tiny_imagefolder, tmp_path / "first", *with_cache))  # digit_1
    (own,) = cache.glob("fisher-*.safetensors")
    digit_2 = argv(tiny_imagefolder, tmp_path / "digit_2", *with_cache)
    _script().main([arg if arg != "digit_1" else "digit_2" for arg in digit_2])
    (foreign,) = set(cache.glob("fisher-*.safetensors")) - {own}
    os.replace(foreign, own)

    with caplog.at_level(logging.WARNING):
        _script().main(argv(tiny_imagefolder, tmp_path / "second", *with_cache))

    assert f"Not using the Fisher cache file {own}: it was computed for another forget_data" in caplog.text
    second = assert_same_outcome(tmp_path / "second", tmp_path / "first")
    assert second["fisher_source"] == "computed"
    assert len(list(cache.glob("*.bad-*"))) == 1 and own.is_file()  # set aside; this run's Fisher cached again


def test_two_runs_on_one_folder_the_second_is_refused_with_the_holders_pid(
    tiny_imagefolder, tmp_path, monkeypatch
):
    """The first run in a thread of this process, the second started while it holds the folder."""
    out = tmp_path / "out"
    first = threading.Thread(target=_script().main, args=(argv(tiny_imagefolder, out, "--max_steps", "8"),))
    first.start()
    try:
        while not (out / OWNER_FILE).exists() and first.is_alive():
            time.sleep(0.01)
        load_classifier = hf_pbu.cli.unlearn.load_classifier

        def only_the_first_run_loads(*args):  # the first run may not have reached it yet: only this thread fails
            if threading.current_thread() is first:
                return load_classifier(*args)
            pytest.fail("the second run loaded the model")

        monkeypatch.setattr(hf_pbu.cli.unlearn, "load_classifier", only_the_first_run_loads)
        message = error_of(argv(tiny_imagefolder, out))
        monkeypatch.setattr(hf_pbu.cli.unlearn, "load_classifier", load_classifier)
    finally:
        first.join()
    assert message.startswith(f"error: Another run is writing to {out} (pid {os.getpid()} on ")
    assert "one run per output folder" in message and "--output_dir" in message
    with open(out / RESULTS_FILE) as f:
        first_results = json.load(f)  # the first run's, which ended normally (by its stop rule, within 8 steps)
    assert first_results["forgotten"] and first_results["steps"] <= 8
    # The lock is released with the run: the folder is free again (here refused as finished, not as held).
    assert "holds a finished run" in error_of(argv(tiny_imagefolder, out))


def test_a_killed_runs_lock_does_not_block_the_next_run(tmp_path):
    """The operating system releases the lock of a process killed with SIGKILL; its stale owner file is ignored."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import filelock, sys, time; lock = filelock.FileLock(sys.argv[1]); lock.acquire(); "
         "print('held', flush=True); time.sleep(600)", str(tmp_path / LOCK_FILE)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        (tmp_path / OWNER_FILE).write_text(json.dumps({"pid": holder.pid, "host": "elsewhere", "started": "earlier"}))
        busy = rf"Another run is writing to {tmp_path} \(pid {holder.pid} on elsewhere"
        with pytest.raises(OutputFolderInUseError, match=busy):
            OutputFolderLock(str(tmp_path)).acquire()
    finally:
        holder.kill()
        holder.wait()
    with OutputFolderLock(str(tmp_path)):
        assert json.loads((tmp_path / OWNER_FILE).read_text())["pid"] == os.getpid()


@pytest.mark.parametrize(("extra", "expected"), [
    (["--forget_loss", "neg_ce", "--stop_forget_accuracy", "100", "--stop_trigger_accuracy", "100"],
     "The weights are exactly the original ones, nothing was unlearned: the stop criterion was met before any update"),
    (["--learning_rate", "1e30"], "The PBU loss became non-finite at step 1"),
], ids=["weights-unchanged", "weights-overflow"])
def test_no_run_exits_0_with_the_original_or_non_finite_weights(tiny_imagefolder, tmp_path, extra, expected):
    out = tmp_path / "out"
    message = error_of(argv(tiny_imagefolder, out, *extra))
    assert message.startswith(f"error: {expected}"), message
    assert not {"model.safetensors", "config.json", RESULTS_FILE, "README.md"} & files(out)
    for checkpoint in out.glob("checkpoint-*"):  # only finite weights were ever written
        assert all(torch.isfinite(t).all() for t in load_file(checkpoint / "model.safetensors").values())
