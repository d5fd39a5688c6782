"""Users' own data and models through `scripts/unlearn.py` (issue 18), one small fixture each, built here: phone
photos stored sideways, 16-bit scans, a few dozen forget images with the defaults, a training script's
`--remove_unused_columns True`, a failing evidence step, a run that did not forget, a head larger than the dataset, a
timm model saved through transformers, multi-label and several label columns."""

import json
import os
import shutil

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from conftest import TINY_CLASSES
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List
from hub_fixtures import fit_to_digits
from offline_data import digits_dataset
from PIL import Image as PILImage
from test_unlearn_script import FAST, _script, offline, one_thread  # noqa: F401  (fixtures, used below)
from transformers import AutoModelForImageClassification

import hf_pbu.trainer
import hf_pbu.unlearning
from hf_pbu.evidence.measurement import accuracy
from hf_pbu.models import load_classifier, processor_transform
from hf_pbu.results import RESULTS_FILE

FORGET = "digit_1"
# Offline (HF_HUB_OFFLINE, the populated cache, a private datasets cache) and one thread, as test_unlearn_script.py.
pytestmark = pytest.mark.usefixtures("offline", "one_thread")


@pytest.fixture
def push_allowed(monkeypatch):
    """`--push_to_hub` passes the pre-flight checks (online mode, a token): the tests that use it replace the push
    itself and check that a failed run never reaches it."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")


def _run(argv: list[str]) -> str | None:
    """The command in this process: None when it succeeded, else its one-line error."""
    try:
        _script().main(argv)
    except SystemExit as exit_info:
        message = str(exit_info.code)
        assert message.startswith("error: ")
        return message
    return None


def _args(model: str, data: str, out, *extra: str) -> list[str]:
    return ["--model_id", model, "--dataset_name", "imagefolder", "--dataset_dir", data, "--forget_class", FORGET,
            "--output_dir", str(out), *FAST, *extra]


def _results(out) -> dict:
    return json.loads((out / RESULTS_FILE).read_text())


def _convert_imagefolder(source: str, target, save) -> str:
    """Every PNG of the imagefolder `source` rewritten under `target` by `save(image, path_without_suffix)`."""
    for root, _, files in os.walk(source):
        for name in files:
            folder = target / os.path.relpath(root, source)
            folder.mkdir(parents=True, exist_ok=True)
            save(PILImage.open(os.path.join(root, name)), str(folder / os.path.splitext(name)[0]))
    return str(target)


def _upright_accuracy(model, folder: str, transform) -> float:
    """Accuracy of `model` on the images of `folder` (one class: FORGET) decoded as plain upright PNGs."""
    images = torch.stack([transform(PILImage.open(os.path.join(folder, f)).convert("RGB"))
                          for f in sorted(os.listdir(folder))])
    labels = torch.full((len(images),), TINY_CLASSES.index(FORGET))
    return accuracy(model.eval(), [{"pixel_values": x, "labels": y} for x, y in zip(images, labels)], 64)


# ------------------------------------------------------------------------------------------------- image decoding

def test_phone_photos_with_exif_orientation_are_forgotten_upright(tiny_model_dirs, tiny_imagefolder,
                                                                  tmp_path):
    """JPEGs stored sideways with EXIF Orientation 6, as phones write them (the model was trained upright): the run
    reads them upright, so the model it saves no longer recognises the class on upright images."""
    def phone(image, path):
        exif = PILImage.Exif()
        exif[PILImage.ExifTags.Base.Orientation] = 6  # "turn 90 degrees clockwise to display"
        sideways = image.convert("RGB").resize((32, 32), PILImage.BILINEAR).transpose(PILImage.Transpose.ROTATE_90)
        sideways.save(f"{path}.jpg", quality=95, subsampling=0, exif=exif.tobytes())

    photos = _convert_imagefolder(tiny_imagefolder, tmp_path / "photos", phone)
    assert PILImage.open(next((tmp_path / "photos" / "train" / FORGET).iterdir())).getexif()[274] == 6
    out = tmp_path / "out"
    assert _run(_args(tiny_model_dirs["timm"], photos, out)) is None
    results = _results(out)
    assert results["before"]["forget_train_accuracy"] >= 90  # read upright, the model knows the class
    assert results["forgotten"] and results["after"]["forget_train_accuracy"] <= 0.5
    unlearned = load_classifier(str(out))
    upright = os.path.join(tiny_imagefolder, "train", FORGET)
    assert _upright_accuracy(unlearned.model, upright, unlearned.transform) <= 10.0
    original = load_classifier(tiny_model_dirs["timm"])
    assert _upright_accuracy(original.model, upright, original.transform) >= 90.0


def test_sixteen_bit_scans_are_read_with_their_contrast(tiny_model_dirs, tiny_imagefolder, tmp_path):
    """16-bit grayscale PNGs (a scanner's, a microscope's): scaled to 8 bits, the model recognises its classes and
    the run forgets, where clipping made every image white and the run refused the class as unknown."""
    scans = _convert_imagefolder(
        tiny_imagefolder, tmp_path / "scans",
        lambda image, path: PILImage.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257).save(
            f"{path}.png"))
    assert PILImage.open(next((tmp_path / "scans" / "train" / FORGET).iterdir())).mode == "I;16"
    out = tmp_path / "out"
    assert _run(_args(tiny_model_dirs["transformers"], scans, out)) is None
    results = _results(out)
    assert results["before"]["forget_train_accuracy"] >= 90 and results["before"]["retain_test_accuracy"] >= 90
    assert results["forgotten"] and results["after"]["forget_test_accuracy"] <= 25


# ------------------------------------------------------------------------------ a run succeeds only if it forgot

def test_run_that_did_not_forget_fails_is_marked_and_is_not_pushed(tiny_model_dirs, tiny_imagefolder,
                                                                   tmp_path, monkeypatch, capsys, push_allowed):
    pushed = []
    monkeypatch.setattr(hf_pbu.trainer, "push_unlearned_model", lambda *args, **kwargs: pushed.append(args))
    out = tmp_path / "out"
    argv = _args(tiny_model_dirs["timm"], tiny_imagefolder, out, "--push_to_hub", "--hub_model_id", "me/tiny")
    argv[argv.index("--max_steps") + 1] = "1"
    argv[argv.index("--learning_rate") + 1] = "1e-6"
    message = _run(argv)
    assert message is not None and "Not forgotten" in message and "--max_steps 2" in message
    assert "Nothing was pushed" in message and not pushed
    results = _results(out)
    assert results["forgotten"] is False and results["after"]["forget_train_accuracy"] > 0.5
    for name in ("config.json", "model.safetensors", "README.md"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert "**Not forgotten.**" in card and "drop-in replacement" not in card
    assert "Forgot digit_1" not in capsys.readouterr().out


def test_step_budget_has_a_floor_in_optimizer_steps_that_large_sets_do_not_reach(tmp_path):
    """20 epochs over 40 images in batches of 64 are 20 steps: the floor makes them `min_step_budget`; a 6,000-image
    class keeps its 20 epochs (1,880 steps), no more."""
    from hf_pbu import PBUConfig

    args = PBUConfig(output_dir=str(tmp_path), report_to="none")
    assert args.step_budget(40) == args.min_step_budget == 400
    assert args.step_budget(6000) == 20 * 94
    assert PBUConfig(output_dir=str(tmp_path), report_to="none", min_step_budget=0).step_budget(40) == 20


def _forty_image_dataset(folder) -> str:
    """A saved dataset whose forget class has 40 training images (the other two, 60 each), with test images."""
    data = digits_dataset()
    features = Features({"image": Image(), "label": ClassLabel(names=TINY_CLASSES)})
    splits = {}
    for split, counts in (("train", (60, 40, 60)), ("test", (20, 20, 20))):
        labels = np.asarray(data[split]["label"])
        keep = np.concatenate([np.flatnonzero(labels == c)[:n] for c, n in enumerate(counts)]).tolist()
        subset = data[split].select(keep)
        splits[split] = Dataset.from_dict({"image": subset["image"], "label": subset["label"]}, features=features)
    DatasetDict(splits).save_to_disk(str(folder))
    return str(folder)


@pytest.mark.slow
def test_forty_forget_images_with_the_defaults_end_by_the_stop_rule(tiny_model_dirs, tmp_path, caplog):
    """The README's defaults on a forget set of 40 images: the step budget leaves the run room to forget and to end
    by its stop rule, with no warning."""
    out = tmp_path / "out"
    data = _forty_image_dataset(tmp_path / "forty")
    assert _run(["--model_id", tiny_model_dirs["timm"], "--dataset_name", data, "--forget_class", FORGET,
                 "--output_dir", str(out), "--report_to", "none", "--disable_tqdm", "true",
                 "--fisher_cache_dir", "none"]) is None
    results = _results(out)
    assert results["forget_train_samples"] == 40
    assert results["stopped_at_step"] is not None and results["forgotten"]
    assert not [r for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("hf_pbu")]


# ------------------------------------------------------------------------------------- nothing lost, no crash

def test_remove_unused_columns_from_a_training_script_is_set_back(tiny_model_dirs, tiny_imagefolder,
                                                                   tmp_path, caplog):
    out = tmp_path / "out"
    assert _run(_args(tiny_model_dirs["timm"], tiny_imagefolder, out, "--remove_unused_columns", "True")) is None
    assert "using --remove_unused_columns False" in caplog.text
    assert _results(out)["forgotten"]


def test_failing_evidence_step_keeps_the_model_card_and_results(tiny_model_dirs, tiny_imagefolder,
                                                                tmp_path, monkeypatch, push_allowed):
    """A step after unlearning fails (here the evidence, as on a head it did not know): the trained model, its card
    and the results are on disk already, the failure is recorded, the exit code says so and nothing is pushed."""
    def broken(*args, **kwargs):
        raise RuntimeError("the classifier head is laid out differently")

    pushed = []
    monkeypatch.setattr(hf_pbu.unlearning, "collect_evidence", broken)
    monkeypatch.setattr(hf_pbu.trainer, "push_unlearned_model", lambda *args, **kwargs: pushed.append(args))
    out = tmp_path / "out"
    message = _run(_args(tiny_model_dirs["transformers"], tiny_imagefolder, out, "--push_to_hub"))
    assert message is not None and "The evidence step failed" in message and "laid out differently" in message
    assert "--evidence" not in message  # not given: the fix is not to leave it out
    assert not pushed
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", RESULTS_FILE):
        assert (out / name).is_file(), name
    results = _results(out)
    assert results["forgotten"] and "laid out differently" in results["evidence_error"]
    assert "The evidence step failed after unlearning" in (out / "README.md").read_text()
    reloaded = AutoModelForImageClassification.from_pretrained(out)
    assert reloaded.config.num_labels == 3


# ----------------------------------------------------------------------------------------------------- models

def test_head_larger_than_the_dataset_goes_by_id(tiny_imagefolder, tmp_path):
    """A 10-output head with no label names, fine-tuned on 3 classes (as a 1000-class head on a subset): refused
    with the flag to pass, then unlearned with dataset id i taken as output i, and saved with its 10 outputs."""
    import timm
    from hub_fixtures import TINY_INPUT
    from timm.models import save_for_hf

    from hf_pbu.models import eval_transform

    torch.manual_seed(0)
    narrow = {"channels": (8, 16, 16, 16), "stem_width": 8}
    model = timm.create_model("test_resnet", num_classes=10, pretrained_cfg_overlay=TINY_INPUT, **narrow)
    fit_to_digits(model, eval_transform(model), 3)
    folder = str(tmp_path / "wide")
    save_for_hf(model, folder, model_args=narrow, safe_serialization=True)
    out = tmp_path / "out"
    message = _run(_args(folder, tiny_imagefolder, out))
    assert "The model has 10 classes but the dataset has 3" in message and "--match_labels_by_id" in message
    assert _run(_args(folder, tiny_imagefolder, out, "--match_labels_by_id", "true")) is None
    results = _results(out)
    assert results["forget_classes"] == [1] and results["forgotten"]
    assert results["before"]["retain_test_accuracy"] >= 90
    assert timm.create_model(f"local-dir:{out}", pretrained=True).num_classes == 10


def _save_timm_wrapper(folder: str) -> str:
    """A timm model saved through transformers (`model_type: timm_wrapper`), fitted to the first three digits."""
    from tiny_transformers import build_tiny
    from transformers import AutoImageProcessor

    model = build_tiny("timm_wrapper", len(TINY_CLASSES))
    model.config.id2label = dict(enumerate(TINY_CLASSES))
    model.config.label2id = {name: i for i, name in enumerate(TINY_CLASSES)}
    model.save_pretrained(folder)  # the processor is read from the timm pretrained config
    fit_to_digits(model.train(), processor_transform(AutoImageProcessor.from_pretrained(folder)), 3)
    model.save_pretrained(folder)
    return folder


def test_timm_wrapper_model_round_trip(tiny_imagefolder, tmp_path):
    source = _save_timm_wrapper(str(tmp_path / "wrapped"))
    loaded = load_classifier(source)
    assert (loaded.family, loaded.label_names, loaded.in_chans) == ("transformers", TINY_CLASSES, 3)
    out = tmp_path / "out"
    assert _run(_args(source, tiny_imagefolder, out)) is None
    assert json.loads((out / "config.json").read_text())["model_type"] == "timm_wrapper"
    reloaded = AutoModelForImageClassification.from_pretrained(out)  # the user's own transformers code
    assert type(reloaded).__name__ == "TimmWrapperForImageClassification"
    forget = os.path.join(tiny_imagefolder, "train", FORGET)
    assert _upright_accuracy(reloaded, forget, loaded.transform) <= 0.5  # the unlearned weights were saved
    assert _upright_accuracy(load_classifier(source).model, forget, loaded.transform) >= 90


# ----------------------------------------------------------------------------------- errors that name the fix

def _saved_digits(folder, columns: dict, features: dict) -> str:
    """A saved dataset of the first 12 digits (classes 0..2) with `columns` beside the image."""
    images = [PILImage.fromarray(np.full((8, 8), 20 * i, dtype=np.uint8)) for i in range(12)]
    data = Dataset.from_dict({"image": images, **columns}, features=Features({"image": Image(), **features}))
    DatasetDict(train=data, test=data).save_to_disk(str(folder))
    return str(folder)


def test_multi_label_column_is_refused_naming_the_column_and_flag(tiny_model_dirs, tmp_path):
    labels = [[i % 3] + ([0] if i % 2 else []) for i in range(12)]
    data = _saved_digits(tmp_path / "multi", {"labels": labels}, {"labels": List(ClassLabel(names=TINY_CLASSES))})
    message = _run(["--model_id", tiny_model_dirs["timm"], "--dataset_name", data, "--forget_class", FORGET,
                    "--output_dir", str(tmp_path / "out"), *FAST])
    assert "The label column 'labels' holds lists" in message and "multi-label" in message
    assert "--label_column" in message


def test_other_label_columns_are_named_when_the_first_does_not_match(tiny_model_dirs, tmp_path):
    """CIFAR-100's layout: a coarse and a fine label column. The first does not match the model's classes: the
    error names the other column and `--label_column`."""
    columns = {"coarse_label": [i % 2 for i in range(12)], "digit": [i % 3 for i in range(12)]}
    features = {"coarse_label": ClassLabel(names=["round", "straight"]), "digit": ClassLabel(names=TINY_CLASSES)}
    data = _saved_digits(tmp_path / "two_columns", columns, features)
    argv = ["--model_id", tiny_model_dirs["timm"], "--dataset_name", data, "--forget_class", FORGET,
            "--output_dir", str(tmp_path / "out"), *FAST]
    message = _run(argv)
    assert "The labels were read from 'coarse_label'" in message
    assert "'digit' (3 classes): pass --label_column digit" in message


def test_undecodable_image_in_the_forget_folder_is_named(tiny_model_dirs, tiny_imagefolder, tmp_path):
    """The forget-only folder reads through the same decoder: a file that is not an image is named, no traceback."""
    folder = tmp_path / "forget"
    shutil.copytree(os.path.join(tiny_imagefolder, "train", FORGET), folder)
    (folder / "zz_upload.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated upload")
    message = _run(["--model_id", tiny_model_dirs["timm"], "--forget_dir", str(folder), "--forget_class", FORGET,
                    "--output_dir", str(tmp_path / "out"), *FAST])
    assert message.startswith("error: Cannot read the image file") and "zz_upload.jpg" in message


# ------------------------------------------------------------------------------------------------------ polish

@pytest.mark.parametrize("disable_tqdm", [True, False])
def test_progress_bars_follow_disable_tqdm_and_cpu_runs_do_not_warn_about_pin_memory(tmp_path, capsys,
                                                                                     disable_tqdm):
    import warnings

    from tiny_models import DictDataset, TinyConvNet, random_images

    from hf_pbu import PBUConfig, PBUTrainer

    forget = DictDataset(random_images(8), torch.ones(8, dtype=torch.long))
    args = PBUConfig(output_dir=str(tmp_path), disable_tqdm=disable_tqdm, max_steps=2, fisher_cache_dir="none",
                     report_to="none", use_cpu=True, save_strategy="no", forget_loss="neg_ce")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PBUTrainer(model=TinyConvNet(3), args=args, train_dataset=forget).train()
    assert not [w for w in caught if "pin_memory" in str(w.message)]
    assert ("Fisher:" in capsys.readouterr().err) is not disable_tqdm
