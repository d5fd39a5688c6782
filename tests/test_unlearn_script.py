"""scripts/unlearn.py as users run it: Hub ids of both families (offline HF cache, local `olah` Hub), local data,
forget-only mode, bad input, and (slow) the digits acceptance run in one and two processes."""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import datasets
import huggingface_hub
import pytest
import timm
import torch
from conftest import TINY_CLASSES, TINY_REPOS
from huggingface_hub import ModelCard
from transformers import AutoModelForImageClassification

from hf_pbu.data import load_image_dataset
from hf_pbu.models import load_classifier
from hf_pbu.results import RESULTS_FILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "unlearn.py")
# Small, fast runs that still forget (a run that does not fails): the tiny models forget their 12 images and the
# default objective reaches its plateau within 20 steps at this learning rate.
FAST = ["--learning_rate", "1e-3", "--max_steps", "40", "--per_device_train_batch_size", "8", "--fisher_batch_size",
        "8", "--mia_samples", "12", "--fisher_estimator", "empirical", "--report_to", "none", "--disable_tqdm", "true"]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One intra-op thread here and in launched scripts: tiny models gain nothing from more, and on a busy 2-core
    machine two threads per process oversubscribe the cores and run ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)


def _script():
    spec = importlib.util.spec_from_file_location("unlearn_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def offline(monkeypatch, hf_cache, tmp_path):
    """This process as with HF_HUB_OFFLINE=1 and HF_HUB_CACHE=<populated cache> (read by huggingface_hub at
    import, hence set on its constants), with a private datasets cache."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", hf_cache)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))


def _reload(family: str, folder: str):
    if family == "timm":
        return timm.create_model(f"local-dir:{folder}", pretrained=True)
    return AutoModelForImageClassification.from_pretrained(folder)


def _check_run(family: str, output_dir, stdout: str, forget_class: str = "digit_1") -> dict:
    with open(os.path.join(output_dir, RESULTS_FILE)) as f:
        results = json.load(f)
    assert results["forget_classes"] == [TINY_CLASSES.index(forget_class)]
    assert results["eval_split"] == "test"
    assert results["steps"] >= 1
    for when in ("before", "after"):
        assert set(results[when]["mia"]) == {"entropy_svc", "loss_logistic"}
        assert 0 <= results[when]["mia"]["entropy_svc"] <= 100
    assert "A_Df (forget test, %)" in stdout and "MIA loss_logistic" in stdout
    assert _reload(family, str(output_dir)).state_dict().keys()
    return results


@pytest.mark.parametrize("family", ["timm", "transformers"])
def test_hub_id_from_offline_cache(offline, tiny_imagefolder, tmp_path, capsys, family):
    _script().main(["--model_id", TINY_REPOS[family], "--dataset_name", "imagefolder", "--dataset_dir",
                    tiny_imagefolder, "--forget_class", "digit_1", "--output_dir", str(tmp_path / "out"), *FAST])
    _check_run(family, tmp_path / "out", capsys.readouterr().out)


@pytest.mark.parametrize("family", ["timm", "transformers"])
def test_hub_id_from_local_olah_hub(olah_endpoint, tiny_imagefolder, tmp_path, family):
    env = {**os.environ, "HF_ENDPOINT": olah_endpoint, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "0"}
    run = subprocess.run(
        [sys.executable, SCRIPT, "--model_id", TINY_REPOS[family], "--dataset_name", "imagefolder", "--dataset_dir",
         tiny_imagefolder, "--forget_class", "1", "--output_dir", str(tmp_path / "out"), *FAST],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert os.path.isdir(tmp_path / "hf_home" / "hub" / f"models--{TINY_REPOS[family].replace('/', '--')}")
    _check_run(family, tmp_path / "out", run.stdout)


def test_forget_only_mode_runs_without_retained_data(offline, tiny_imagefolder, tmp_path, caplog):
    _script().main(["--model_id", TINY_REPOS["timm"],
                    "--forget_dir", os.path.join(tiny_imagefolder, "train", "digit_2"),
                    "--forget_class", "digit_2", "--output_dir", str(tmp_path / "out"), *FAST])
    with open(tmp_path / "out" / RESULTS_FILE) as f:
        results = json.load(f)
    assert results["forget_train_samples"] == 12
    for when in ("before", "after"):
        assert results[when]["mia"] is None and results[when]["retain_test_accuracy"] is None
    assert "membership-inference attack are skipped" in caplog.text


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_file_is_read(offline, tiny_imagefolder, tmp_path, capsys, suffix):
    config = tmp_path / f"run{suffix}"
    config.write_text(json.dumps({  # JSON is also YAML
        "model_id": TINY_REPOS["transformers"], "dataset_name": "imagefolder", "dataset_dir": tiny_imagefolder,
        "forget_class": ["digit_0"], "output_dir": str(tmp_path / "out"), "max_steps": 40, "learning_rate": 1e-3,
        "mia_samples": 12,
        "fisher_estimator": "empirical", "report_to": "none",
    }))
    _script().main([str(config)])
    _check_run("transformers", tmp_path / "out", capsys.readouterr().out, forget_class="digit_0")


# Bad input: one clear message each, raised as SystemExit("error: ...") (exit code 1, no traceback).

def _error(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        _script().main(argv)
    message = str(exit_info.value.code)
    assert message.startswith("error: ")
    return message


@pytest.fixture
def base_args(tiny_imagefolder, tmp_path) -> list[str]:
    return ["--model_id", TINY_REPOS["timm"], "--dataset_name", "imagefolder", "--dataset_dir", tiny_imagefolder,
            "--output_dir", str(tmp_path / "out"), *FAST]


def test_unknown_model_id(offline, base_args):
    argv = [*base_args, "--forget_class", "1"]
    argv[argv.index("--model_id") + 1] = "org/no-such-model"
    assert "Cannot find the model 'org/no-such-model'" in _error(argv)


def test_unknown_class_name(offline, base_args):
    assert "Unknown class name 'digit_9'. Known names: digit_0, digit_1, digit_2" in _error(
        [*base_args, "--forget_class", "digit_9"])


def test_class_id_out_of_range(offline, base_args):
    assert "Forget class 7 is out of range: the classes are 0..2" in _error([*base_args, "--forget_class", "7"])


def test_missing_label_column(offline, base_args):
    assert "no column 'fine_label'" in _error([*base_args, "--forget_class", "1", "--label_column", "fine_label"])


def test_empty_forget_split(offline, base_args, tiny_imagefolder, tmp_path):
    data = load_image_dataset("imagefolder", dataset_dir=tiny_imagefolder).splits
    data["train"] = data["train"].filter(lambda label: label != 2, input_columns="label")
    data.save_to_disk(str(tmp_path / "saved"))
    argv = [*base_args, "--forget_class", "digit_2"]
    argv[argv.index("--dataset_dir") + 1] = str(tmp_path / "saved")
    assert "has no samples of the forget class(es) 2 (digit_2)" in _error(argv)


def test_unreadable_image_file(offline, base_args, tiny_imagefolder, tmp_path):
    broken = tmp_path / "broken_digits"
    shutil.copytree(tiny_imagefolder, broken)
    (broken / "train" / "digit_1" / "zz_broken.png").write_bytes(b"\x89PNG not really")
    argv = [*base_args, "--forget_class", "digit_1"]
    argv[argv.index("--dataset_dir") + 1] = str(broken)
    assert "Cannot read the image file" in (message := _error(argv)) and "zz_broken.png" in message


def test_no_dataset_says_what_to_pass(offline, base_args, tiny_model_dirs, tmp_path):
    model = shutil.copytree(tiny_model_dirs["timm"], tmp_path / "model")
    os.remove(model / "README.md")
    assert "names no dataset in its model card: pass --dataset_name" in _error(
        ["--model_id", str(model), "--forget_class", "1", "--output_dir", str(tmp_path / "out")])


def test_train_and_validation_data_is_measured_on_validation_and_kept_out_of_card_metadata(
    offline, tiny_imagefolder, tmp_path, capsys
):
    """Food-101's layout (train/validation, no test): validation is measured on, never held-out train images; a local
    folder is named in the card's text but not in its `datasets` metadata (which the Hub reads as dataset ids)."""
    data = tmp_path / "food_like"
    shutil.copytree(os.path.join(tiny_imagefolder, "train"), data / "train")
    shutil.copytree(os.path.join(tiny_imagefolder, "test"), data / "validation")
    out = tmp_path / "out"
    _script().main(["--model_id", TINY_REPOS["timm"], "--dataset_name", "imagefolder", "--dataset_dir", str(data),
                    "--forget_class", "digit_1", "--output_dir", str(out), *FAST])
    results = json.loads((out / RESULTS_FILE).read_text())
    assert results["eval_split"] == "validation"
    card = ModelCard.load(out / "README.md")
    assert "A_Df and A_Dr on the `validation` split" in card.text and "(`food_like`)" in card.text
    assert card.data.datasets is None
    assert {result.dataset_split for result in card.data.eval_results} == {"validation"}
    assert "imagefolder" not in str(card.data.to_dict())


def _labelled_minus_one_test_split(tiny_imagefolder: str, folder) -> str:
    """ImageNet's layout: train, validation, and a test split whose labels are all -1."""
    data = load_image_dataset("imagefolder", dataset_dir=tiny_imagefolder).splits
    data["validation"] = data["test"]
    data["test"] = data["test"].map(lambda row: {"label": -1})
    data.save_to_disk(str(folder))
    return str(folder)


def test_unlabelled_test_split_is_one_clear_error(offline, base_args, tiny_imagefolder, tmp_path):
    argv = [*base_args, "--forget_class", "digit_1"]
    argv[argv.index("--dataset_dir") + 1] = _labelled_minus_one_test_split(tiny_imagefolder, tmp_path / "saved")
    message = _error(argv)
    assert "The 'test' split has 12 label(s) outside the classes 0..2 (e.g. -1)" in message
    assert "--eval_split validation" in message


def test_forgetting_every_class_is_one_clear_error(offline, base_args):
    assert "names all 3 classes: forgetting every class" in _error(
        [*base_args, "--forget_class", "digit_0", "digit_1", "2"])


def test_model_that_does_not_recognise_the_class_is_stopped_before_the_fisher(
    offline, base_args, tiny_imagefolder, tmp_path, monkeypatch
):
    """Labels that do not mean what the model's outputs mean (here digit_1 and digit_2 swapped): the model scores
    near 0% on the forget class's own training images, and the run stops before any work on it."""
    import hf_pbu.trainer

    swapped = tmp_path / "swapped"
    for split in ("train", "test"):
        for source, target in (("digit_0", "digit_0"), ("digit_1", "digit_2"), ("digit_2", "digit_1")):
            shutil.copytree(os.path.join(tiny_imagefolder, split, source), swapped / split / target)

    def no_fisher(*args, **kwargs):
        raise AssertionError("the Fisher was computed before the sanity check")

    monkeypatch.setattr(hf_pbu.trainer, "load_or_compute_fisher", no_fisher)
    argv = [*base_args, "--forget_class", "digit_1"]
    argv[argv.index("--dataset_dir") + 1] = str(swapped)
    message = _error(argv)
    assert "does not recognise the forget class(es) on this data" in message
    assert "near chance for 3 classes" in message and "--match_labels_by_id" in message


def test_bad_input_exits_with_one_line_not_a_traceback(tiny_imagefolder, tmp_path):
    run = subprocess.run(
        [sys.executable, SCRIPT, "--model_id", str(tmp_path / "nowhere"), "--dataset_name", "imagefolder",
         "--dataset_dir", tiny_imagefolder, "--forget_class", "1", "--output_dir", str(tmp_path / "out")],
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300, check=False,
    )
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error: Cannot find the model")


# The digits acceptance run: the demo's ResNet-18 and all of scikit-learn's digits as an imagefolder of PNGs.

def _digits_run(command: list[str], digits_model, digits_imagefolder, output_dir) -> dict:
    args = ["--model_id", digits_model, "--dataset_name", "imagefolder", "--dataset_dir", digits_imagefolder,
            "--forget_class", "digit_3", "--output_dir", str(output_dir), "--report_to", "none",
            "--disable_tqdm", "true", "--fisher_cache_dir", "none"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([*command, SCRIPT, *args], env=env, capture_output=True, text=True, timeout=3600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("Forgot digit_3") == 1  # printed by the main process only
    with open(os.path.join(output_dir, RESULTS_FILE)) as f:
        return json.load(f)


@pytest.mark.slow
def test_demo_model_names_its_classes(digits_model):
    """In its config.json: a dataset with other classes is then matched by name, or refused, not taken by id."""
    assert load_classifier(digits_model).label_names == [f"digit_{d}" for d in range(10)]


@pytest.mark.slow
def test_digits_acceptance_run(digits_model, digits_imagefolder, tmp_path):
    results = _digits_run([sys.executable], digits_model, digits_imagefolder, tmp_path / "out")
    assert results["after"]["forget_test_accuracy"] <= 2.0
    assert results["after"]["retain_test_accuracy"] >= results["before"]["retain_test_accuracy"] - 2.0
    assert results["after"]["forget_train_accuracy"] <= results["before"]["forget_train_accuracy"]


@pytest.mark.slow
@pytest.mark.distributed
def test_digits_run_under_accelerate_with_two_processes(digits_model, digits_imagefolder, tmp_path):
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    results = _digits_run(launch, digits_model, digits_imagefolder, tmp_path / "out")
    assert results["after"]["forget_test_accuracy"] <= 2.0
    assert results["before"]["forget_test_accuracy"] >= 90.0  # the same measurement as one process: nothing dropped


def test_invalid_pbu_setting_is_one_line(base_args):
    message = _error([*base_args, "--forget_class", "1", "--alpha", "-1"])
    assert "--alpha must be a finite number > 0; got -1.0" in message


def test_failed_push_keeps_the_saved_model_card_and_results(
    tiny_model_dirs, tiny_imagefolder, tmp_path, monkeypatch, capsys
):
    """--push_to_hub to a Hub that does not answer (the prerequisites, checked first, are met): one clear error,
    non-zero exit, and the local output folder complete."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # no waiting between huggingface_hub's retries
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        _script().main(["--model_id", tiny_model_dirs["timm"], "--dataset_name", "imagefolder", "--dataset_dir",
                        tiny_imagefolder, "--forget_class", "digit_1", "--output_dir", str(out), "--push_to_hub",
                        "--hub_model_id", "me/tiny-unlearned", "--hub_token", "hf_test_token", *FAST])
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "connection to the Hub failed" in message and "hf upload" in message
    for name in ("README.md", RESULTS_FILE, "config.json", "model.safetensors"):
        assert (out / name).is_file(), name
    assert "me/tiny-unlearned" in (out / "README.md").read_text()
    assert "Forgot digit_1" in capsys.readouterr().out
