"""One run per output folder: a file lock held for the whole run, with the holder named for whoever is refused.

Two runs writing into one folder would interleave checkpoints and leave the last writer's model beside the other's
results. The lock (`filelock`, on `LOCK_FILE` inside the folder) is released when the run ends, and by the
operating system when its process dies, so a killed run never blocks the next one; `OWNER_FILE` records the
holder's pid and host, for the message.
"""

import json
import os
import socket
import time

from filelock import FileLock, Timeout

from .atomic import write_text

LOCK_FILE = ".hf_pbu_run.lock"
OWNER_FILE = ".hf_pbu_run.json"


class OutputFolderInUseError(RuntimeError):
    """Another run holds the output folder's lock."""


class OutputFolderLock:
    """Holds `output_dir`'s lock from `acquire` to `release` (or for a `with` block)."""

    def __init__(self, output_dir: str):
        self.output_dir = os.path.abspath(output_dir)
        self._lock = FileLock(os.path.join(self.output_dir, LOCK_FILE))

    def acquire(self) -> "OutputFolderLock":
        """Take the lock at once, or raise `OutputFolderInUseError` naming the folder and the run that holds it."""
        os.makedirs(self.output_dir, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise OutputFolderInUseError(
                f"Another run is writing to {self.output_dir} ({self._holder()}): one run per output folder. Wait for "
                "it to end, or choose another --output_dir."
            ) from None
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_text(os.path.join(self.output_dir, OWNER_FILE), json.dumps(owner))
        return self

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release()

    def __enter__(self) -> "OutputFolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _holder(self) -> str:
        try:
            with open(os.path.join(self.output_dir, OWNER_FILE)) as f:
                owner = json.load(f)
            return f"pid {owner['pid']} on {owner['host']}, started {owner['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "pid unknown: it has only just started"
