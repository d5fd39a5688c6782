"""Shared offline fixtures: tiny Hub models (HF cache and an `olah` server), digits image folders."""


import pytest
from datasets import DatasetDict
from hub_fixtures import (
    export_imagefolder,
    git_mirror,
    olah_server,
    populate_hf_cache,
    save_tiny_timm,
    save_tiny_transformers,
    write_card,
)
from offline_data import digits_dataset

TINY_CLASSES = ["digit_0", "digit_1", "digit_2"]
TINY_REPOS = {"timm": "org/tiny-timm", "transformers": "org/tiny-resnet"}


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, str]:
    """Both families' tiny classifiers (classes digit_0..2) in their Hub layouts, with a card naming a dataset."""
    root = tmp_path_factory.mktemp("tiny_models")
    dirs = {
        "timm": save_tiny_timm(str(root / "timm"), TINY_CLASSES),
        "transformers": save_tiny_transformers(str(root / "transformers"), TINY_CLASSES),
    }
    for folder in dirs.values():
        write_card(folder, ["org/tiny-digits"])
    return dirs


@pytest.fixture(scope="session")
def hf_cache(tmp_path_factory, tiny_model_dirs) -> str:
    """An HF hub cache holding org/tiny-timm and org/tiny-resnet as if downloaded (use with HF_HUB_OFFLINE=1)."""
    cache = str(tmp_path_factory.mktemp("hf_cache"))
    for family, repo in TINY_REPOS.items():
        populate_hf_cache(cache, repo, tiny_model_dirs[family])
    return cache


@pytest.fixture(scope="session")
def olah_endpoint(tmp_path_factory, tiny_model_dirs):
    """HF_ENDPOINT of a local `olah` server serving org/tiny-timm and org/tiny-resnet from git repos."""
    work = tmp_path_factory.mktemp("olah")
    for family, repo in TINY_REPOS.items():
        git_mirror(str(work / "mirrors"), repo, tiny_model_dirs[family])
    with olah_server(str(work / "mirrors"), str(work)) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def tiny_imagefolder(tmp_path_factory) -> str:
    """digits_0..2 as an imagefolder (train/ and test/ of PNG files), 12 train and 4 test images per class."""
    data = digits_dataset()
    small = {}
    for split, per_class in (("train", 12), ("test", 4)):
        labels = data[split]["label"]
        keep = [i for c in range(3) for i in [j for j, y in enumerate(labels) if y == c][:per_class]]
        small[split] = data[split].select(keep)
    return export_imagefolder(DatasetDict(small), str(tmp_path_factory.mktemp("tiny_digits")))


@pytest.fixture(scope="session")
def digits_imagefolder(tmp_path_factory) -> str:
    """All of `digits_dataset()` exported as an imagefolder (train/ and test/, PNG files)."""
    return export_imagefolder(digits_dataset(), str(tmp_path_factory.mktemp("digits")))


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory) -> str:
    """The demo's digits ResNet-18 (timm layout), trained afresh with the current recipe (~40 s) for this session:
    a copy kept under outputs/ may come from an older recipe."""
    from base_models import train_digits_model

    return train_digits_model(str(tmp_path_factory.mktemp("digits-resnet18")))
