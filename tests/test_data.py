"""Loading image-classification data from any source, label alignment with the model, forget-only folders."""

import os

import numpy as np
import pytest
from conftest import TINY_CLASSES
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from offline_data import digits_dataset
from PIL import Image as PILImage

from hf_pbu.data import (
    ImageData,
    align_labels,
    forget_folder_dataset,
    load_image_dataset,
    load_unlearning_splits,
    open_image,
    resolve_forget_classes,
    unlearning_splits,
)
from hf_pbu.models import load_classifier


def test_imagefolder_columns_and_splits_are_detected(tiny_imagefolder):
    data = load_image_dataset("imagefolder", dataset_dir=tiny_imagefolder)
    assert (data.image_column, data.label_column) == ("image", "label")
    assert data.names == TINY_CLASSES
    assert (len(data.splits["train"]), len(data.splits["test"])) == (36, 12)
    first = data.splits["train"][0]["image"]
    assert first["path"].endswith(".png")  # undecoded until used, so unreadable files can be named
    assert open_image(first).size == (8, 8)


def test_saved_dataset_without_evaluation_split_is_held_out_only_when_asked(tmp_path, caplog):
    digits = digits_dataset()["train"].rename_columns({"image": "img", "label": "digit"})
    digits.save_to_disk(str(tmp_path))
    with pytest.raises(ValueError, match="no 'test' or 'validation' split.*--eval_split.*--eval_holdout_fraction"):
        load_image_dataset(dataset_dir=str(tmp_path))
    first = load_image_dataset(dataset_dir=str(tmp_path), eval_holdout_fraction=0.25, seed=1)
    second = load_image_dataset(str(tmp_path), eval_holdout_fraction=0.25, seed=1)
    assert "Measuring on 25% of 'train' held out (stratified, seed 1)" in caplog.text
    assert (first.eval_split, first.holdout_fraction) == ("train", 0.25)
    assert (first.image_column, first.label_column) == ("img", "digit")
    assert len(first.splits["test"]) == pytest.approx(0.25 * len(digits), abs=1)
    assert first.splits["test"]["digit"] == second.splits["test"]["digit"]
    per_class = np.bincount(first.splits["test"]["digit"], minlength=10)
    np.testing.assert_allclose(per_class, 0.25 * np.bincount(digits["digit"]), atol=1)  # stratified


def test_validation_split_is_measured_on_when_there_is_no_test_split(tmp_path):
    digits = digits_dataset()
    DatasetDict(train=digits["train"], validation=digits["test"]).save_to_disk(str(tmp_path))
    data = load_image_dataset(dataset_dir=str(tmp_path))
    assert data.eval_split == "validation" and not data.holdout_fraction
    assert data.splits["test"]["label"] == digits["test"]["label"]  # all of validation, none of train
    assert len(data.splits["train"]) == len(digits["train"])
    with pytest.raises(ValueError, match="either --eval_split or --eval_holdout_fraction"):
        load_image_dataset(dataset_dir=str(tmp_path), eval_split="validation", eval_holdout_fraction=0.2)
    with pytest.raises(ValueError, match="no split 'dev'.*train, validation"):
        load_image_dataset(dataset_dir=str(tmp_path), eval_split="dev")


def test_unlabelled_split_is_refused_naming_it(tmp_path):
    """ImageNet's test split: every label -1."""
    digits = digits_dataset()
    unlabelled = digits["test"].map(lambda row: {"label": -1})
    DatasetDict(train=digits["train"], validation=digits["test"], test=unlabelled).save_to_disk(str(tmp_path))
    with pytest.raises(ValueError, match=r"The 'test' split has 360 label\(s\) outside the classes 0..9 \(e.g. -1\) "
                       r"\(it looks unlabelled\): pass --eval_split with a labelled split, e.g. --eval_split "
                       "validation"):
        load_image_dataset(dataset_dir=str(tmp_path))
    assert load_image_dataset(dataset_dir=str(tmp_path), eval_split="validation").eval_split == "validation"


def test_forgetting_every_class_is_refused():
    with pytest.raises(ValueError, match="names all 3 classes: forgetting every class leaves no classifier"):
        resolve_forget_classes(["digit_0", "1", "digit_2"], TINY_CLASSES)
    assert resolve_forget_classes(["digit_0", "1"], TINY_CLASSES) == [0, 1]


def _tiny_dataset(labels, label_feature) -> DatasetDict:
    images = [PILImage.new("L", (4, 4), color=i * 40) for i in range(len(labels))]
    features = Features({"picture": Image(), "y": label_feature})
    split = Dataset.from_dict({"picture": images, "y": labels}, features=features)
    return split


@pytest.mark.parametrize(
    ("labels", "feature", "names"),
    [
        ([0, 2, 1, 2], Value("int64"), ["0", "1", "2"]),
        (["cat", "dog", "cat", "ant"], Value("string"), ["ant", "cat", "dog"]),
    ],
)
def test_plain_label_columns_become_class_labels(tmp_path, labels, feature, names):
    DatasetDict(train=_tiny_dataset(labels, feature), test=_tiny_dataset(labels, feature)).save_to_disk(str(tmp_path))
    data = load_image_dataset(dataset_dir=str(tmp_path), label_column="y")
    assert data.image_column == "picture"
    assert data.names == names
    assert [names[i] for i in data.splits["train"]["y"]] == [str(label) for label in labels]


def test_missing_label_column_says_which_flag(tiny_imagefolder):
    with pytest.raises(ValueError, match="no column 'fine_label'.*--label_column"):
        load_image_dataset("imagefolder", dataset_dir=tiny_imagefolder, label_column="fine_label")


def _image_data(names: list[str], labels: list[int]) -> ImageData:
    split = _tiny_dataset(labels, ClassLabel(names=names))
    return ImageData(DatasetDict(train=split, test=split), "picture", "y")


def test_labels_are_mapped_to_the_model_by_name():
    data = align_labels(_image_data(["b", "a"], [0, 1, 1]), model_names=["a", "b", "c"], model_classes=3)
    assert data.names == ["a", "b", "c"]
    assert data.splits["train"]["y"] == [1, 0, 0]
    assert data.splits["test"]["y"] == [1, 0, 0]


def test_unnamed_model_takes_dataset_ids_when_counts_agree():
    data = _image_data(["a", "b"], [0, 1])
    assert align_labels(data, model_names=None, model_classes=2) is data
    with pytest.raises(ValueError, match="model has 3 classes but the dataset has 2"):
        align_labels(data, model_names=None, model_classes=3)


def test_label_names_that_do_not_match_are_refused_with_the_fix():
    data = _image_data(["x", "y"], [0, 1])
    with pytest.raises(ValueError, match="not among the model's 2 labels.*--match_labels_by_id"):
        align_labels(data, model_names=["a", "b"], model_classes=2)
    assert align_labels(data, model_names=["a", "b"], model_classes=2, by_id=True).names == ["a", "b"]


def test_unlearning_splits_add_a_fixed_retain_train_sample():
    data = digits_dataset()
    first = unlearning_splits(data, [3], retain_train_samples=50, seed=4)
    second = unlearning_splits(data, [3], retain_train_samples=50, seed=4)
    assert len(first["retain_train"]) == 50
    assert 3 not in first["retain_train"]["label"]
    assert first["retain_train"]["label"] == second["retain_train"]["label"]
    assert "retain_train" not in unlearning_splits(data, [3])


def _write_images(folder, count: int) -> None:
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        PILImage.new("RGB", (6, 6)).save(os.path.join(folder, f"{i}.jpg"))


def test_forget_folder_labels_every_image_with_the_class(tmp_path):
    _write_images(tmp_path / "a", 2)
    _write_images(tmp_path, 1)
    (tmp_path / "notes.txt").write_text("not an image")
    dataset = forget_folder_dataset(str(tmp_path), [2], TINY_CLASSES)
    assert dataset["label"] == [2, 2, 2]


def test_forget_folder_with_several_classes_needs_class_subfolders(tmp_path):
    _write_images(tmp_path / "digit_0", 2)
    _write_images(tmp_path / "2", 1)
    assert sorted(forget_folder_dataset(str(tmp_path), [0, 2], TINY_CLASSES)["label"]) == [0, 0, 2]
    _write_images(tmp_path, 1)
    with pytest.raises(ValueError, match="one sub-folder per forget class"):
        forget_folder_dataset(str(tmp_path), [0, 2], TINY_CLASSES)


def test_empty_forget_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="holds no image files"):
        forget_folder_dataset(str(tmp_path), [0], TINY_CLASSES)


def test_unreadable_image_is_named(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="Cannot read the image file .*broken.png"):
        open_image({"path": str(path), "bytes": None})


def test_forget_only_mode_has_forget_data_alone(tiny_model_dirs, tmp_path):
    _write_images(tmp_path, 3)
    loaded = load_classifier(tiny_model_dirs["timm"])
    data = load_unlearning_splits(loaded, ["digit_1"], forget_dir=str(tmp_path))
    splits = data.splits
    assert (data.forget_classes, data.names, data.eval_split) == ([1], TINY_CLASSES, None)
    assert [len(splits[k]) for k in ("forget_train", "forget_test", "retain_test")] == [3, 0, 0]
    assert "retain_train" not in splits
    item = splits["forget_train"][0]
    assert item["pixel_values"].shape == (3, 32, 32) and item["labels"] == 1


def test_hub_style_repo_with_config_and_split_names(tmp_path):
    """A dataset repo laid out as on the Hub (parquet files, configs declared in README.md), read by the same
    `load_dataset(name, config)` call as a Hub id."""
    data = digits_dataset()
    for split, name in (("train", "training"), ("test", "holdout")):
        os.makedirs(tmp_path / "small", exist_ok=True)
        data[split].select(range(30)).to_parquet(str(tmp_path / "small" / f"{name}.parquet"))
    (tmp_path / "README.md").write_text(
        "---\nconfigs:\n- config_name: small\n  data_files:\n  - split: training\n    path: small/training.parquet\n"
        "  - split: holdout\n    path: small/holdout.parquet\n---\n"
    )
    loaded = load_image_dataset(str(tmp_path), "small", train_split="training", eval_split="holdout",
                                cache_dir=str(tmp_path / "cache"))
    assert loaded.names == [f"digit_{d}" for d in range(10)]
    assert loaded.splits["test"]["label"] == data["test"]["label"][:30]
    assert open_image(loaded.splits["train"][0]["image"]).size == (8, 8)  # embedded bytes, decoded on use


def test_only_the_needed_splits_are_prepared(tmp_path):
    """ImageNet's layout as a Hub-style repo: measuring on validation never reads the test split's files (here
    unreadable), which `load_dataset` would otherwise prepare too."""
    data = digits_dataset()
    os.makedirs(tmp_path / "data")
    data["train"].select(range(40)).to_parquet(str(tmp_path / "data" / "train.parquet"))
    data["test"].select(range(20)).to_parquet(str(tmp_path / "data" / "validation.parquet"))
    (tmp_path / "data" / "test.parquet").write_bytes(b"not parquet")
    (tmp_path / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n" + "".join(
            f"  - split: {split}\n    path: data/{split}.parquet\n" for split in ("train", "validation", "test")
        ) + "---\n"
    )
    loaded = load_image_dataset(str(tmp_path), eval_split="validation", cache_dir=str(tmp_path / "cache"))
    assert loaded.eval_split == "validation"
    assert loaded.splits["test"]["label"] == data["test"]["label"][:20]
