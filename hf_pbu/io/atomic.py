"""Writes that a kill, a crash or a full disk cannot leave half done.

A file or a folder is written under a temporary name beside its destination (in the destination folder's
`WORK_DIR`, so on the same filesystem) and renamed into place once complete: a reader finds the previous version
or the new one, never an empty or truncated file. A write that fails removes its temporary files and raises one
`OSError` that names the folder, what could not be written and what the folder still holds.
"""

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator

from safetensors import SafetensorError

# Inside an output folder: the staging areas of writes in progress (left by a kill, removed by the next write).
WORK_DIR = ".hf_pbu_tmp"


def is_write_failure(err: BaseException) -> bool:
    """Whether `err` is a failed write (full disk, quota, file size limit, read-only or vanished folder), as
    Python, safetensors (Rust) and `torch.save` report it."""
    if isinstance(err, (OSError, SafetensorError)):
        return True
    return isinstance(err, RuntimeError) and "write" in str(err).lower()  # torch.save: "... file write failed"


def write_error(err: BaseException, folder: str, what: str) -> OSError:
    """One `OSError` for a failed write of `what` into `folder`: the cause, and the complete files the folder
    keeps (nothing half-written is left)."""
    folder = os.path.abspath(folder)
    code = getattr(err, "errno", None) or errno.EIO
    if code == errno.ENOSPC or "No space left" in str(err):
        code, cause = errno.ENOSPC, "the disk is full"
    elif code == errno.EFBIG or "File too large" in str(err):
        code, cause = errno.EFBIG, "a file reached the size limit of this filesystem or process"
    else:
        cause = f"{type(err).__name__}: {err}"
    kept = sorted(name for name in os.listdir(folder) if not name.startswith(".")) if os.path.isdir(folder) else []
    holds = f"everything it holds is complete: {', '.join(kept)}" if kept else "it holds nothing"
    error = OSError(f"Could not write {what} to {folder} ({cause}); {holds}. Free some space (or choose another "
                    "folder) and run the same command again.")
    error.errno = code  # set after: OSError(code, message) would prefix the message with "[Errno N]"
    return error


def work_dir(folder: str) -> str:
    """`folder`'s staging area, created if missing."""
    path = os.path.join(folder, WORK_DIR)
    os.makedirs(path, exist_ok=True)
    return path


def remove_work_dir_if_empty(folder: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(os.path.join(folder, WORK_DIR))


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:  # some filesystems cannot fsync a folder: the data is flushed all the same
        if err.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_tree(path: str) -> None:
    """Flush `path` (a file, or a folder with everything under it) to disk, so that a rename that follows
    publishes complete contents even after a power loss."""
    paths = [path]
    if os.path.isdir(path):
        for root, folders, files in os.walk(path):
            paths += [os.path.join(root, name) for name in files + folders]
    for item in reversed(paths):  # files before the folders that list them
        _fsync(item)


def fsync_folder(folder: str) -> None:
    """Flush `folder`'s own entries (a rename into it), not what they hold."""
    if os.name == "posix":
        _fsync(folder)


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "w", **open_kwargs) -> Iterator:
    """Open a temporary file beside `path` for writing; on success it is flushed and renamed to `path`, on failure
    removed (the previous `path`, if any, untouched) and the error raised as `write_error`."""
    folder = os.path.dirname(path) or "."  # as the kernel resolves it (`a/link/..` is not `a`)
    os.makedirs(folder, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        with open(temporary, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        fsync_folder(folder)
    except Exception as err:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if is_write_failure(err):
            raise write_error(err, folder, os.path.basename(path)) from err
        raise


def write_text(path: str, text: str) -> None:
    """`path` holds `text` (UTF-8, newlines as given), or its previous contents if the write failed."""
    with atomic_file(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


@contextlib.contextmanager
def staged_files(folder: str, what: str) -> Iterator[str]:
    """A fresh staging folder to write `what` (one or more files) into; on success its entries replace their
    namesakes in `folder` one rename each, on failure it is removed and the error raised as `write_error`."""
    os.makedirs(folder, exist_ok=True)
    staging = tempfile.mkdtemp(dir=work_dir(folder), prefix="save-")
    try:
        yield staging
        fsync_tree(staging)
        for name in sorted(os.listdir(staging)):
            target = os.path.join(folder, name)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            os.replace(os.path.join(staging, name), target)
        fsync_folder(folder)
    except Exception as err:
        if is_write_failure(err):
            raise write_error(err, folder, what) from err
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        remove_work_dir_if_empty(folder)
