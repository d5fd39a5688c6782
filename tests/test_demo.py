"""The offline digits demo (`make demo`) and its input checks."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from offline_data import digits_dataset

from hf_pbu.data import resolve_forget_classes, unlearning_splits

ROOT = Path(__file__).resolve().parents[1]


def run_script(path: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / path), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=3600)


def test_digits_dataset_is_real_and_stratified():
    data = digits_dataset()
    assert len(data["train"]) + len(data["test"]) == 1797
    assert data["train"].features["label"].names[3] == "digit_3"
    counts = np.bincount(data["test"]["label"], minlength=10)
    assert counts.min() >= 30  # every class in the test split
    assert data["train"][0]["image"].size == (8, 8)


def test_forget_class_names_and_ids_resolve():
    names = [f"digit_{d}" for d in range(10)]
    assert resolve_forget_classes(["digit_3", "7", "3"], names) == [3, 7]
    with pytest.raises(ValueError, match="Unknown class name 'cat'"):
        resolve_forget_classes(["cat"], names)


def test_forget_class_without_training_samples_is_refused():
    data = digits_dataset()
    data["train"] = data["train"].filter(lambda row: row["label"] != 5)
    with pytest.raises(ValueError, match="no samples of the forget class"):
        unlearning_splits(data, [5])


@pytest.mark.slow
def test_demo_forgets_digit_3_and_keeps_the_rest(tmp_path):
    """`make demo`'s two commands, on fresh folders."""
    data, base, out = tmp_path / "digits", tmp_path / "base", tmp_path / "unlearned"
    prepare = run_script("benchmarks/prepare_demo.py", "--dataset_dir", str(data), "--model_dir", str(base))
    assert prepare.returncode == 0, prepare.stderr[-3000:]
    run = run_script("scripts/unlearn.py", "--model_id", str(base), "--dataset_name", str(data),
                     "--forget_class", "digit_3", "--output_dir", str(out), "--disable_tqdm", "true",
                     "--fisher_cache_dir", str(tmp_path / "fc"), "--evidence_required_level", "output")
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((out / "unlearning_results.json").read_text())
    assert results["forget_classes"] == [3]
    assert results["after"]["forget_test_accuracy"] <= 2.0
    assert results["after"]["retain_test_accuracy"] >= results["before"]["retain_test_accuracy"] - 2.0
    assert "A_Df" in (out / "README.md").read_text()
    import timm

    reloaded = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert reloaded.num_classes == 10


@pytest.mark.slow
@pytest.mark.parametrize("centring", ["false", "true"])
def test_the_recentre_attack_reads_the_demos_head_level_and_centred_rows_close_it(tmp_path, centring):
    """On the demo's model, whose features hold every digit: the `head` level with free forget rows hides digit 3
    by a shift of its row, which the image-free re-centre attack undoes (the run then fails by its own attacks unless
    that level is accepted); with `--forget_row_centring` the row cannot shift, and the attack finds nothing."""
    data, base, out = tmp_path / "digits", tmp_path / "base", tmp_path / "unlearned"
    prepare = run_script("benchmarks/prepare_demo.py", "--dataset_dir", str(data), "--model_dir", str(base))
    assert prepare.returncode == 0, prepare.stderr[-3000:]
    run = run_script("scripts/unlearn.py", "--model_id", str(base), "--dataset_name", str(data),
                     "--forget_class", "digit_3", "--output_dir", str(out), "--disable_tqdm", "true",
                     "--fisher_cache_dir", "none", "--forget_row_centring", centring,
                     "--evidence_required_level", "output")
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((out / "unlearning_results.json").read_text())
    recentre = results["evidence"]["attacks"]["recentre_row"]
    assert results["after"]["forget_test_accuracy"] <= 2.0 and recentre["before"]["forget_test_accuracy"] > 80.0
    if centring == "false":
        assert recentre["after"]["forget_test_accuracy"] >= 20.0, recentre
        assert results["evidence"]["forgetting_level"]["level"] == "output"
    else:
        assert recentre["after"]["forget_test_accuracy"] <= 5.0, recentre
        assert results["evidence"]["forgetting_level"]["level"] != "output"
