"""Writes that a kill, a crash or a full disk cannot leave half done.

A file or a folder is written under a temporary name beside its destination (in the destination folder's
`WORK_DIR`, so on the same filesystem) and renamed into place once complete: a reader finds the previous version
or the new one, never an empty or truncated file. A write that fails removes its temporary files and raises one
`OSError` that names the folder, what could not be written and what the folder still holds.
"""

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator

from safetensors import SafetensorError

# Inside an output folder: the staging areas of writes in progress (left by a kill, removed by the next write).
WORK_DIR = ".hf_pbu_tmp"


# A write that fails with another error than an `OSError` (`torch.save`'s C++ stream reports a full disk as
# "unexpected pos" or "basic_ios::clear") is a full disk when its filesystem has less than this left.
LOW_SPACE_BYTES = 16 * 2**20

# How Rust's `std::io::Error` (safetensors' writer) shows the errno of a failed system call.
RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")

CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "a file reached the size limit of this filesystem or process",
}


def _chain(err: BaseException) -> Iterator[BaseException]:
    """`err` and the exceptions it was raised from or while handling (`__cause__`, `__context__`)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def free_bytes(path: str) -> int | None:
    """Free space, in bytes, of the filesystem that holds `path` (or would: its nearest existing folder)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _reached_file_size_limit(target: str) -> bool:
    """Whether a file at or under `target` has reached this process's file size limit (`ulimit -f`), where the
    kernel stops a write (EFBIG) whatever the writer reports."""
    import resource  # POSIX only

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit == resource.RLIM_INFINITY:
        return False
    paths = [target]
    if os.path.isdir(target):
        paths = [os.path.join(root, name) for root, _, names in os.walk(target) for name in names]
    return any(os.path.isfile(path) and os.path.getsize(path) >= limit for path in paths)


def write_failure(err: BaseException, target: str | None = None) -> int | None:
    """The errno of a failed write, or None when `err` is not one. An `OSError` (raised by Python, or the one an
    error was raised from) gives its own; any other error raised while writing `target` (a file, or a folder being
    filled) counts as a full disk (ENOSPC) when `target`'s filesystem has less than `LOW_SPACE_BYTES` free, and as
    the file size limit (EFBIG) when a file there has reached it, whatever its message says: `torch.save` reports
    both as a `RuntimeError` ("unexpected pos"). A `SafetensorError` gives the errno of the Rust `std::io::Error` it
    shows ("(os error 28)"); its other errors are I/O errors (EIO)."""
    for cause in _chain(err):
        if isinstance(cause, OSError) and cause.errno:
            return cause.errno
        if isinstance(cause, SafetensorError) and (code := RUST_OS_ERROR.search(str(cause))):
            return int(code[1])  # the errno of the Rust writer's `std::io::Error`
    if target is not None:
        free = free_bytes(target)
        if free is not None and free < LOW_SPACE_BYTES:
            return errno.ENOSPC
        if os.name == "posix" and _reached_file_size_limit(target):
            return errno.EFBIG
    if any(isinstance(cause, (OSError, SafetensorError)) for cause in _chain(err)):
        return errno.EIO
    return None


def is_write_failure(err: BaseException, target: str | None = None) -> bool:
    """Whether `err`, raised while writing `target`, is a failed write (`write_failure`)."""
    return write_failure(err, target) is not None


def write_error(err: BaseException, folder: str, what: str, code: int | None = None) -> OSError:
    """One `OSError` for a failed write of `what` into `folder` (`code`: its errno, `write_failure`'s): the cause,
    and the complete files the folder keeps (nothing half-written is left)."""
    folder = os.path.abspath(folder)
    code = code or write_failure(err) or errno.EIO
    cause = CAUSES.get(code) or f"{type(err).__name__}: {err}"
    kept = sorted(name for name in os.listdir(folder) if not name.startswith(".")) if os.path.isdir(folder) else []
    holds = f"everything it holds is complete: {', '.join(kept)}" if kept else "it holds nothing"
    error = OSError(f"Could not write {what} to {folder} ({cause}); {holds}. Free some space (or choose another "
                    "folder) and run the same command again.")
    error.errno = code  # set after: OSError(code, message) would prefix the message with "[Errno N]"
    return error


def raise_if_write_failure(err: BaseException, target: str, folder: str, what: str) -> None:
    """Raise `write_error` for `err` if it is a failed write of `target` (measured now, before the partial files
    are removed); return otherwise, for the caller to re-raise `err`."""
    code = write_failure(err, target)
    if code is not None:
        raise write_error(err, folder, what, code) from err


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
        code = write_failure(err, temporary)  # measured before the partial file goes
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if code is not None:
            raise write_error(err, folder, os.path.basename(path), code) from err
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
        raise_if_write_failure(err, staging, folder, what)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        remove_work_dir_if_empty(folder)
