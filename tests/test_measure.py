"""Measurements: one prediction pass per split, on the training device through the trainer's accelerator, the same
figures with two processes as with one, and no hand-written collectives anywhere in the library."""

import ast
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hf_pbu.evidence.measurement as evaluation
import hf_pbu.unlearning as unlearning
from hf_pbu import Measurement, PBUConfig
from hf_pbu.evidence.measurement import measure
from hf_pbu.unlearning import check_model_knows_forget_classes, recognition_threshold

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from distributed_measure import fixture
from test_distributed import SCRIPTS, accelerate_launch

LIBRARY = Path(__file__).resolve().parents[1] / "hf_pbu"
CLASSES = 4


def _uses_torch_distributed(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(alias.name.startswith("torch.distributed") for alias in node.names)
    if isinstance(node, ast.ImportFrom):
        module = node.module or ""
        return module.startswith("torch.distributed") or (
            module == "torch" and any(alias.name == "distributed" for alias in node.names)
        )
    return (isinstance(node, ast.Attribute) and node.attr == "distributed" and isinstance(node.value, ast.Name)
            and node.value.id == "torch")


def test_library_has_no_hand_written_collectives():
    """Every collective goes through Accelerate, which puts the tensors where the backend expects them: no module of
    hf_pbu imports or calls `torch.distributed` (docstrings may name it)."""
    found = [f"{path.relative_to(LIBRARY)}:{node.lineno}"
             for path in LIBRARY.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
             if _uses_torch_distributed(node)]
    assert not found, found


class OneHot(nn.Linear):
    """A classifier that recognises every class: logits are 8 x its one-hot inputs."""

    num_classes = CLASSES

    def __init__(self):
        super().__init__(CLASSES, CLASSES)
        with torch.no_grad():
            self.weight.copy_(8 * torch.eye(CLASSES))
            self.bias.zero_()


def _items(labels: list[int]) -> list[dict]:
    return [{"pixel_values": F.one_hot(torch.tensor(y), CLASSES).float(), "labels": y} for y in labels]


def _splits() -> dict:
    return {"forget_train": _items([0] * 6), "forget_test": _items([0] * 3), "retain_test": _items([1, 2, 3] * 3),
            "retain_train": _items([1, 2, 3] * 5)}


def test_one_prediction_pass_per_split_serves_accuracy_and_attacks(monkeypatch):
    """A plain model (as baselines pass it) with no accelerator given; each split through the model once, and the
    attack's members cut to as many as its non-members before the model runs."""
    passes = []
    predictions = evaluation.predictions

    def counting(model, dataset, *args, **kwargs):
        passes.append(len(dataset))
        return predictions(model, dataset, *args, **kwargs)

    monkeypatch.setattr(evaluation, "predictions", counting)
    results = measure(OneHot(), {**_splits(), "retain_train_all": _items([1] * 50)}, batch_size=4)
    assert sorted(passes) == [3, 6, 9, 9]  # forget_test, forget_train, retain_test, retain_train (15 cut to 9)
    assert results.forget_test_accuracy == results.retain_test_accuracy == results.forget_train_accuracy == 100.0
    assert set(results.mia) == {"entropy_svc", "loss_logistic"}


class _FirstMeasurement(Exception):
    pass


def test_model_is_on_the_training_device_before_the_first_measurement(monkeypatch, tmp_path):
    """`unlearn` builds the trainer (which places the model on `args.device`) before measuring, and measures with
    the trainer's accelerator: under NCCL a CPU model would hand CPU tensors to the collectives."""
    trainers, seen = [], {}

    class SpyTrainer(unlearning.PBUTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)

    def spy(model, splits, batch_size, accelerator=None, *args, **kwargs):
        seen.update(trainers=list(trainers), model=model, accelerator=accelerator,
                    devices={p.device for p in model.parameters()})
        raise _FirstMeasurement

    monkeypatch.setattr(unlearning, "PBUTrainer", SpyTrainer)
    monkeypatch.setattr(unlearning, "measure", spy)
    config = PBUConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", fisher_cache_dir="none",
                       max_steps=1, per_device_train_batch_size=2)
    with pytest.raises(_FirstMeasurement):
        unlearning.unlearn(OneHot(), config, _splits(), [0])
    assert len(seen["trainers"]) == 1, "the trainer must exist before the first measurement"
    trainer = seen["trainers"][0]
    assert seen["model"] is trainer.model
    assert seen["accelerator"] is trainer.accelerator
    assert seen["devices"] == {trainer.args.device}


@pytest.mark.parametrize(("classes", "threshold"), [(2, 75.0), (3, 200 / 3), (10, 20.0), (1000, 1.0)])
def test_recognition_threshold_is_twice_chance_within_bounds(classes, threshold):
    assert recognition_threshold(classes) == pytest.approx(threshold)


def test_a_class_near_chance_is_refused_and_a_recognised_one_passes():
    with pytest.raises(ValueError, match="does not recognise the forget class.*18.0%.*at most 20.0%"):
        check_model_knows_forget_classes(Measurement(forget_train_accuracy=18.0), 10)
    check_model_knows_forget_classes(Measurement(forget_train_accuracy=21.0), 10)


@pytest.mark.distributed
def test_two_process_measurement_equals_one_process(tmp_path):
    out = tmp_path / "measure.json"
    run = accelerate_launch(SCRIPTS / "distributed_measure.py", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    model, splits = fixture()
    single = measure(model, splits, batch_size=2)
    distributed = json.loads(out.read_text())
    for key in ("forget_test_accuracy", "retain_test_accuracy", "forget_train_accuracy"):
        assert distributed[key] == pytest.approx(getattr(single, key), abs=1e-9), key
    assert distributed["mia"] == pytest.approx(single.mia)
