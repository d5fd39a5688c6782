"""Whether a change left the default run as it was: the demo's command (`make demo`) run by this checkout and by an
earlier commit on the same base model and data, and the two unlearned models compared tensor by tensor, bit for bit.

    python benchmarks/same_model.py --against a7e5dfd

The commit is checked out into a temporary git worktree and its `scripts/unlearn.py` runs there (its own library,
first on PYTHONPATH), in the same environment as this checkout's run (the thread count changes the arithmetic of CPU
kernels, so both runs must share it); both use the demo's base model and dataset (made once by
`benchmarks/prepare_demo.py`), the same seed and no Fisher cache. Exits non-zero, naming the tensors, when any
differs.
"""

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import HfArgumentParser

ROOT = Path(__file__).resolve().parents[1]
DEMO_FLAGS = ["--forget_class", "digit_3", "--disable_tqdm", "true", "--fisher_cache_dir", "none"]


@dataclass
class SameModelArguments:
    against: str = field(metadata={"help": "The commit whose default run to compare with."})
    model_dir: str = field(default="outputs/digits-resnet18", metadata={"help": "The demo's base model."})
    dataset_dir: str = field(default="outputs/digits", metadata={"help": "The demo's dataset."})


def run_demo(checkout: Path, output_dir: Path, args: SameModelArguments) -> None:
    """The demo's unlearning command, run by `checkout`'s own code. A run that fails at its job after training (a
    verdict, not a crash) still saves its model, which is what is compared; one that saves none is an error."""
    command = [sys.executable, str(checkout / "scripts" / "unlearn.py"), "--model_id", str(ROOT / args.model_dir),
               "--dataset_name", str(ROOT / args.dataset_dir), "--output_dir", str(output_dir), *DEMO_FLAGS]
    env = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(command, cwd=checkout, env=env, check=False, capture_output=True, text=True)
    if not (output_dir / "model.safetensors").is_file():
        raise SystemExit(f"The demo run of {checkout} saved no model (exit {run.returncode}):\n{run.stderr[-3000:]}")
    if run.returncode:
        print(f"The demo run of {checkout} exited {run.returncode}: {run.stderr.strip().splitlines()[-1][:400]}")


def differences(a: Path, b: Path) -> list[str]:
    """The tensors of `a/model.safetensors` and `b/model.safetensors` that are not bit-identical."""
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    names = sorted(set(first) | set(second))
    return [name for name in names if name not in first or name not in second or not torch.equal(first[name],
                                                                                                second[name])]


def main() -> None:
    (args,) = HfArgumentParser(SameModelArguments).parse_args_into_dataclasses()
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "prepare_demo.py"), "--dataset_dir", args.dataset_dir,
                    "--model_dir", args.model_dir], cwd=ROOT, check=True, capture_output=True)
    with tempfile.TemporaryDirectory() as work:
        current = Path(work) / "current"
        run_demo(ROOT, current, args)
        checkout, reference = Path(work) / "checkout", Path(work) / "reference"
        subprocess.run(["git", "worktree", "add", "--detach", str(checkout), args.against], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            run_demo(checkout, reference, args)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(checkout)], cwd=ROOT, check=False)
        different = differences(current, reference)
    if different:
        raise SystemExit(f"The default run's model differs from {args.against}'s in {len(different)} tensor(s): "
                         f"{', '.join(different[:5])}")
    print(f"The default run's model is bit-identical to {args.against}'s.")


if __name__ == "__main__":
    main()
