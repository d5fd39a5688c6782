"""One run, written once: the model saved once, the card and the results file written once, at the end, and each
split measured once before and once after (issue 23)."""

import json
import os
from collections import Counter

import pytest
import torch
from test_unlearn_script import FAST, _script, offline  # noqa: F401  (fixture)

import hf_pbu.evidence.measurement as measurement
import hf_pbu.io.atomic as atomic
import hf_pbu.trainer as trainer_module
from hf_pbu.io.model_card import CARD_FILE
from hf_pbu.results import RESULTS_FILE
from hf_pbu.trainer import PBUTrainer


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_run_writes_its_card_and_results_once_and_saves_the_model_once(offline, tiny_imagefolder, tmp_path,  # noqa: F811
                                                                          monkeypatch):
    written, saved, passes, trainer_passes = Counter(), [], Counter(), Counter()
    atomic_file = atomic.atomic_file

    def counting_atomic_file(path, *args, **kwargs):
        written[os.path.basename(path)] += 1
        return atomic_file(path, *args, **kwargs)

    save_model, predictions = PBUTrainer.save_model, measurement.predictions

    def counting_save_model(self, *args, **kwargs):
        saved.append(self.state.global_step)
        return save_model(self, *args, **kwargs)

    def counting_predictions(model, dataset, *args, **kwargs):
        passes[len(dataset)] += 1
        return predictions(model, dataset, *args, **kwargs)

    def counting_trainer_predictions(model, dataset, *args, **kwargs):
        trainer_passes[len(dataset)] += 1
        return predictions(model, dataset, *args, **kwargs)

    monkeypatch.setattr(atomic, "atomic_file", counting_atomic_file)
    monkeypatch.setattr(PBUTrainer, "save_model", counting_save_model)
    monkeypatch.setattr(measurement, "predictions", counting_predictions)
    monkeypatch.setattr(trainer_module, "predictions", counting_trainer_predictions)  # its stop checks and last one
    out = tmp_path / "out"
    _script().main(["--model_id", "org/tiny-timm", "--dataset_name", "imagefolder", "--dataset_dir", tiny_imagefolder,
                    "--forget_class", "digit_1", "--output_dir", str(out), "--save_strategy", "no", *FAST])

    assert written[CARD_FILE] == 1 and written[RESULTS_FILE] == 1
    assert len(saved) == 1
    assert (out / CARD_FILE).is_file() and (out / RESULTS_FILE).is_file() and (out / "model.safetensors").is_file()
    # 12 forget-train images: measured once before unlearning, and after it only by the trainer (its stop checks, the
    # last of which, or its final measurement, is the "after"), never again at the end; the test splits (4 forget, 8
    # retained) once before and once after.
    assert passes[12] == 1 and trainer_passes[12] >= 1 and set(trainer_passes) == {12}
    assert passes[4] == 2 and passes[8] == 4  # retain_test and its 8 attack members
    results = json.loads((out / RESULTS_FILE).read_text())
    assert results["after"]["forget_train_accuracy"] is not None
