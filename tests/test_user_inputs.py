"""Users' own data and models through `scripts/unlearn.py` (issue 18), one small fixture each, built here: phone
photos stored sideways, 16-bit scans, a few dozen forget images with the defaults, a training script's
`--remove_unused_columns True`, a failing evidence step, a run that did not forget, a head larger than the dataset, a
timm model saved through transformers, multi-label and several label columns; and (issue 25) the model's own folder
as the output, string labels with a split lacking a class, `--gradient_checkpointing`, `--torch_compile`,
`--trust_remote_code`, a rerun into a finished run's folder, class names the chart's font lacks, and a retained class
wiped out."""

import json
import os
import shutil

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from conftest import TINY_CLASSES
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Value
from hub_fixtures import fit_to_digits
from offline_data import digits_dataset
from PIL import Image as PILImage
from test_unlearn_script import FAST, _script, offline, one_thread  # noqa: F401  (fixtures, used below)
from transformers import AutoModelForImageClassification

import hf_pbu.trainer
import hf_pbu.unlearning
from hf_pbu.evidence.measurement import accuracy
from hf_pbu.io.escaping import markdown_text
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


# ------------------------------------------------------------------------------------------------------ issue 25

def _files(folder) -> dict[str, bytes]:
    """Every file under `folder` with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _weights(out) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def test_output_dir_that_is_the_models_own_folder_is_refused_and_the_model_kept(tiny_model_dirs, tiny_imagefolder,
                                                                                tmp_path):
    """`--model_id model_a --output_dir model_a` (also as timm's `local-dir:model_a`): refused before any work, with
    one message, and every file of the original model untouched (no lock file, card or results written there)."""
    model = tmp_path / "model_a"
    shutil.copytree(tiny_model_dirs["timm"], model)
    original = _files(model)
    for model_id in (str(model), f"local-dir:{model}", os.path.relpath(model)):
        message = _run(_args(model_id, tiny_imagefolder, model))
        assert message is not None and "is the folder of the input model" in message, message
        assert "Choose another --output_dir" in message
        assert _files(model) == original


def _string_label_dataset(folder) -> str:
    """A saved dataset whose `label` column holds the class names as plain strings (no ClassLabel), and whose test
    split has no image of the first class (digit_0): encoded split by split, its digit_1 would become id 0."""
    data = digits_dataset()
    splits = {}
    for split, classes, count in (("train", (0, 1, 2), 12), ("test", (1, 2), 8)):
        labels = np.asarray(data[split]["label"])
        keep = np.concatenate([np.flatnonzero(labels == c)[:count] for c in classes]).tolist()
        subset = data[split].select(keep)
        splits[split] = Dataset.from_dict({"image": subset["image"], "label": [TINY_CLASSES[y] for y in
                                                                              subset["label"]]},
                                          features=Features({"image": Image(), "label": Value("string")}))
    DatasetDict(splits).save_to_disk(str(folder))
    return str(folder)


def _predicted_names(loaded, images) -> list[str]:
    with torch.no_grad():
        batch = torch.stack([loaded.transform(image.convert("RGB")) for image in images])
        return [loaded.label_names[i] for i in loaded.model.eval()(batch).argmax(-1).tolist()]


def test_string_labels_with_a_split_lacking_a_class_forget_the_named_class(tiny_model_dirs, tmp_path):
    """String labels and a test split without one class: one mapping for every split, so the run forgets digit_1
    on the images labelled "digit_1", and its figures are those images' own: read back independently, with the labels
    as the strings they are, the original and the unlearned model score on each class what the results say."""
    from datasets import load_from_disk

    data = _string_label_dataset(tmp_path / "strings")
    out = tmp_path / "out"
    assert _run(["--model_id", tiny_model_dirs["timm"], "--dataset_name", data, "--forget_class", FORGET,
                 "--output_dir", str(out), *FAST]) is None
    results = _results(out)
    assert results["forget_classes"] == [TINY_CLASSES.index(FORGET)]
    assert results["before"]["forget_test_accuracy"] >= 90 and results["after"]["forget_test_accuracy"] <= 25
    assert results["before"]["retain_test_accuracy"] >= 90 and results["forgotten"]
    test = load_from_disk(data)["test"]
    assert isinstance(test.features["label"], Value)  # read back as strings
    unlearned, original = load_classifier(str(out)), load_classifier(tiny_model_dirs["timm"])
    for name, key in ((FORGET, "forget_test_accuracy"), ("digit_2", "retain_test_accuracy")):
        images = [row["image"] for row in test if row["label"] == name]
        for loaded, when in ((original, "before"), (unlearned, "after")):
            share = 100 * np.mean([p == name for p in _predicted_names(loaded, images)])
            assert share == pytest.approx(results[when][key]), (name, when)  # the figures are the images' own
    assert results["after"]["forget_test_accuracy"] <= 25  # forgotten on the images labelled "digit_1"


def test_gradient_checkpointing_gives_the_same_model_or_one_error(tiny_model_dirs, tiny_imagefolder, tmp_path):
    """`--gradient_checkpointing` on a timm model (`set_grad_checkpointing`): the run finishes with the very weights
    of a run without it. A transformers model that does not support it: one error line naming the flag."""
    plain, checkpointed = tmp_path / "plain", tmp_path / "checkpointed"
    assert _run(_args(tiny_model_dirs["timm"], tiny_imagefolder, plain)) is None
    assert _run(_args(tiny_model_dirs["timm"], tiny_imagefolder, checkpointed, "--gradient_checkpointing",
                      "true")) is None
    expected, found = _weights(plain), _weights(checkpointed)
    assert expected.keys() == found.keys()
    assert all(torch.equal(expected[name], found[name]) for name in expected)  # bit-identical
    assert _results(checkpointed)["steps"] == _results(plain)["steps"] and _results(checkpointed)["forgotten"]
    message = _run(_args(tiny_model_dirs["transformers"], tiny_imagefolder, tmp_path / "resnet",
                         "--gradient_checkpointing", "true"))
    assert message is not None and "\n" not in message
    assert "--gradient_checkpointing: ResNetForImageClassification does not support" in message


@pytest.mark.slow  # torch.compile builds its kernels with the C compiler: minutes on a CPU
def test_torch_compile_gives_the_same_model(tiny_model_dirs, tiny_imagefolder, tmp_path):
    """`--torch_compile`: the anchor, the Fisher and the forget rows are keyed by the unwrapped model's parameter
    names, so the run finishes, with the weights of a run without it to float tolerance."""
    plain, compiled = tmp_path / "plain", tmp_path / "compiled"
    assert _run(_args(tiny_model_dirs["timm"], tiny_imagefolder, plain)) is None
    assert _run(_args(tiny_model_dirs["timm"], tiny_imagefolder, compiled, "--torch_compile", "true")) is None
    expected, found = _weights(plain), _weights(compiled)
    assert expected.keys() == found.keys()  # saved under the model's own names, no `_orig_mod.`
    for name in expected:
        torch.testing.assert_close(found[name], expected[name], rtol=1e-3, atol=1e-4, msg=name)
    assert _results(compiled)["forgotten"]


CUSTOM_MODELING = '''
from transformers import ResNetConfig, ResNetForImageClassification


class TinyCustomConfig(ResNetConfig):
    model_type = "tiny_custom_resnet"


class TinyCustomForImageClassification(ResNetForImageClassification):
    config_class = TinyCustomConfig
'''


def test_trust_remote_code_is_a_flag_off_by_default(tiny_model_dirs, tiny_imagefolder, tmp_path, monkeypatch):
    """A model built by its repository's own code (`auto_map`): without `--trust_remote_code`, one error naming the
    flag and its risk, and nothing read from stdin; with it, the run loads the model and forgets."""
    import builtins

    import transformers.dynamic_module_utils

    def no_prompt(*args, **kwargs):
        raise AssertionError("the run asked on stdin")

    monkeypatch.setattr(builtins, "input", no_prompt)
    monkeypatch.setattr(transformers.dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    custom = tmp_path / "custom"
    shutil.copytree(tiny_model_dirs["transformers"], custom)
    (custom / "modeling_tiny_custom.py").write_text(CUSTOM_MODELING)
    config = json.loads((custom / "config.json").read_text())
    config.update(model_type="tiny_custom_resnet", architectures=["TinyCustomForImageClassification"], auto_map={
        "AutoConfig": "modeling_tiny_custom.TinyCustomConfig",
        "AutoModelForImageClassification": "modeling_tiny_custom.TinyCustomForImageClassification"})
    (custom / "config.json").write_text(json.dumps(config))
    message = _run(_args(str(custom), tiny_imagefolder, tmp_path / "refused"))
    assert message is not None and "is built by custom code in its repository" in message
    assert "--trust_remote_code" in message and "only for a repository whose code you have read" in message
    out = tmp_path / "out"
    assert _run(_args(str(custom), tiny_imagefolder, out, "--trust_remote_code", "true")) is None
    assert _results(out)["forgotten"]
    assert json.loads((out / "config.json").read_text())["model_type"] == "tiny_custom_resnet"


def test_a_finished_runs_folder_is_not_resumed_and_changed_settings_are_refused(tiny_model_dirs, tiny_imagefolder,
                                                                                tmp_path):
    """Rerunning the same command with another `--learning_rate` into a finished run's folder: refused, the run's
    files untouched (its card never states a rate it did not use). An interrupted run's checkpoint resumed under a
    changed training value (learning rate, batch size, schedule): refused, naming the value."""
    out = tmp_path / "out"
    argv = _args(tiny_model_dirs["timm"], tiny_imagefolder, out)
    assert _run(argv) is None
    finished = _files(out)
    rerun = list(argv)
    rerun[rerun.index("--learning_rate") + 1] = "2e-3"
    message = _run(rerun)
    assert message is not None and "holds a finished run" in message and "choose another --output_dir" in message
    assert _files(out) == finished
    assert "| Optimizer / learning rate | adamw_torch_fused / 0.001 " in (out / "README.md").read_text()
    # Interrupted before its results were written: its last checkpoint is resumed only at the same settings.
    (out / RESULTS_FILE).unlink()
    (out / "README.md").unlink()
    assert list(out.glob("checkpoint-*"))
    for flag, value, setting in (("--learning_rate", "2e-3", "settings.learning_rate: 0.001 in the checkpoint, "
                                  "0.002 now"),
                                 ("--per_device_train_batch_size", "4", "settings.per_device_train_batch_size: 8 in "
                                  "the checkpoint, 4 now"),
                                 ("--lr_scheduler_type", "linear", "settings.lr_scheduler_type: 'constant' in the "
                                  "checkpoint, 'linear' now")):
        changed = list(argv)
        if flag in changed:
            changed[changed.index(flag) + 1] = value
        else:
            changed += [flag, value]
        message = _run(changed)
        assert message is not None and message.startswith("error: Cannot resume"), message
        assert setting in message, message
        assert not (out / RESULTS_FILE).exists()


def test_class_names_the_charts_font_lacks_go_on_the_axis_as_ids(tiny_model_dirs, tiny_imagefolder, tmp_path):
    """Non-Latin class names (猫): the chart's font (DejaVu Sans) has no glyph for them, so the axis shows class ids
    and the card lists the names; no "Glyph missing" warning. Latin names stay on the axis."""
    import warnings

    from hf_pbu.evidence.per_class import chart_font_draws

    names = ["猫", "犬", "鳥"]
    model = tmp_path / "cjk_model"
    shutil.copytree(tiny_model_dirs["timm"], model)
    config = json.loads((model / "config.json").read_text())
    config["label_names"] = names
    config["pretrained_cfg"]["label_names"] = names
    (model / "config.json").write_text(json.dumps(config, ensure_ascii=False))
    data = tmp_path / "cjk_data"
    for split in ("train", "test"):
        for old, new in zip(TINY_CLASSES, names):
            shutil.copytree(os.path.join(tiny_imagefolder, split, old), data / split / new)
    out = tmp_path / "out"
    argv = _args(str(model), str(data), out)
    argv[argv.index("--forget_class") + 1] = "犬"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _run(argv) is None
    assert not [w for w in caught if "Glyph" in str(w.message)]
    results = _results(out)
    assert results["forgotten"] and results["evidence"]["chart_class_ids"] == [0, 1, 2]
    assert (out / "per_class_accuracy.png").stat().st_size > 0
    card = (out / "README.md").read_text()
    assert "The chart's axis shows class ids" in card
    assert all(f"| {i} | {name} |" in card for i, name in enumerate(names))
    assert chart_font_draws(["digit_1", "café", "a/b|c*[d]"]) and not chart_font_draws(["猫"])


def test_a_retained_class_wiped_out_is_named_in_the_log_card_and_results(tiny_model_dirs, tiny_imagefolder,
                                                                         tmp_path, caplog):
    """Forgetting digit_1 with the unbounded -CE at a high rate until the plateau takes digit_2 to 0%: the log, the
    card and `unlearning_results.json` name it (threshold `--retained_drop_warning`, 5 points), the run still exits
    0; with a threshold above the fall nothing is named."""
    argv = _args(tiny_model_dirs["timm"], tiny_imagefolder, tmp_path / "out", "--forget_loss", "neg_ce",
                 "--forget_level", "output", "--stop_rule", "plateau")
    argv[argv.index("--learning_rate") + 1] = "1e-2"
    assert _run(argv) is None
    results = _results(tmp_path / "out")
    collapsed = results["collapsed_classes"]
    assert collapsed and results["retained_drop_warning"] == 5
    assert all(item["before"] - item["after"] > 5 and item["id"] != 1 for item in collapsed)
    per_class = results["evidence"]["per_class_accuracy"]
    assert [item["id"] for item in collapsed] == [c for c in (0, 2) if per_class["before"][c] - per_class["after"][c]
                                                  > 5]
    worst = collapsed[0]
    assert f"retained class(es) lost more than 5 points of test accuracy: {worst['name']}" in caplog.text
    card = (tmp_path / "out" / "README.md").read_text()
    assert "**Retained classes lost accuracy.**" in card
    assert f"{markdown_text(worst['name'])} (id {worst['id']})" in card
    drop = worst["before"] - worst["after"]
    argv[argv.index("--output_dir") + 1] = str(tmp_path / "loose")
    assert _run([*argv, "--retained_drop_warning", f"{min(drop + 1, 100):g}"]) is None
    assert [item["id"] for item in _results(tmp_path / "loose")["collapsed_classes"]] == [
        item["id"] for item in collapsed if item["before"] - item["after"] > min(drop + 1, 100)]
