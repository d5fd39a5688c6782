"""The Fisher under `accelerate launch` with 2 processes (gloo on CPU) equals the single-process Fisher."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from hf_pbu import compute_fisher_diagonal

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from distributed_fisher import fixture

SCRIPTS = Path(__file__).parent / "scripts"


def accelerate_launch(script: Path, *args: str, processes: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(script), *args]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.distributed
def test_two_process_fisher_equals_one_process(tmp_path):
    out = tmp_path / "fisher.safetensors"
    run = accelerate_launch(SCRIPTS / "distributed_fisher.py", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    distributed = load_file(out)
    model, dataset = fixture()
    single = compute_fisher_diagonal(model, DataLoader(dataset, batch_size=3), show_progress=False)
    for name, value in single.items():
        rel = (distributed[name] - value).abs().max() / value.abs().max()
        assert rel <= 1e-6, (name, rel.item())
