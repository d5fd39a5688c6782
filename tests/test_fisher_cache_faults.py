"""Faults in the Fisher cache and in an interrupted Fisher's partial sums: every bad file is set aside with a
warning that names it and the Fisher is computed again, equal bit for bit to a clean computation; nothing bad is
used, promoted to the cache or ends in a traceback."""

import json
import logging
import os
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tiny_models import DictDataset, TinyConvNet, random_images, trained_bn_stats
from torch.utils.data import DataLoader

from hf_pbu.io.fisher_cache import KEY_FIELD, load_checked, save_checked
from hf_pbu.objective.fisher import (
    compute_fisher_diagonal,
    fisher_cache_key,
    fisher_cache_path,
    fisher_partial_path,
    fisher_partial_sums,
    load_or_compute_fisher,
)

BATCH = 4


@pytest.fixture
def setup():
    torch.manual_seed(0)
    images = random_images(12)
    model = trained_bn_stats(TinyConvNet(3), images)
    dataset = DictDataset(images, torch.arange(12) % 3)
    return model, dataset


def make_loader(dataset):
    return lambda: DataLoader(dataset, batch_size=BATCH)


def tensor_span(path: str, name: str) -> tuple[int, int]:
    """Byte offsets in the file of tensor `name`'s data (the safetensors layout: 8-byte header size, JSON header)."""
    with open(path, "rb") as f:
        (header_size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_size))
    start, end = header[name]["data_offsets"]
    return 8 + header_size + start, 8 + header_size + end


def overwrite_values(path: str, name: str, value: float) -> None:
    """Overwrite tensor `name`'s float32 values in place, header intact (what a bad disk or a stray write does)."""
    start, end = tensor_span(path, name)
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(struct.pack("<f", value) * ((end - start) // 4))


def corrupt(path: str, kind: str) -> None:
    size = os.path.getsize(path)
    if kind == "nan-values":
        overwrite_values(path, "head.weight", float("nan"))
    elif kind == "finite-wrong-values":
        overwrite_values(path, "head.weight", 0.5)
    elif kind == "truncated":
        os.truncate(path, size // 2)
    elif kind == "random-bytes":
        with open(path, "wb") as f:
            f.write(os.urandom(size))
    elif kind == "empty":
        os.truncate(path, 0)


def set_aside(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder) if ".bad-" in name)


@pytest.mark.parametrize("kind", ["nan-values", "finite-wrong-values", "truncated", "random-bytes", "empty",
                                  "no-checksum"])
def test_a_bad_cache_file_is_set_aside_and_the_fisher_computed_again(setup, tmp_path, caplog, kind):
    model, dataset = setup
    reference, seconds, source = load_or_compute_fisher(model, dataset, make_loader(dataset), str(tmp_path))
    assert source == "computed"
    path = fisher_cache_path(str(tmp_path), model, dataset, "exact", 1, 0)
    if kind == "no-checksum":  # a file in the right place written by another tool or version
        save_file({name: value.contiguous() for name, value in reference.items()}, path)
    else:
        corrupt(path, kind)

    with caplog.at_level(logging.WARNING):
        again, _, source = load_or_compute_fisher(model, dataset, make_loader(dataset), str(tmp_path))

    assert source == "computed"
    assert all(torch.equal(again[name], reference[name]) for name in reference)
    assert f"Not using the Fisher cache file {path}" in caplog.text and "computing the Fisher again" in caplog.text
    assert len(set_aside(tmp_path)) == 1  # kept for inspection, out of the way
    assert load_checked(path, None, "Fisher cache file") is not None  # the cache now holds the sound Fisher
    _, cached_seconds, source = load_or_compute_fisher(model, dataset, make_loader(dataset), str(tmp_path))
    assert source == "cached" and cached_seconds > 0


def test_a_cache_of_another_shape_is_refused(setup, tmp_path, caplog):
    """Same key (file name), other parameters: the file must hold this model's parameters with their shapes."""
    model, dataset = setup
    path = fisher_cache_path(str(tmp_path), model, dataset, "exact", 1, 0)
    reference, _, _ = load_or_compute_fisher(model, dataset, make_loader(dataset), str(tmp_path))
    other = {name: torch.zeros(3) for name in reference}
    save_checked(path, other, 1.0, fisher_cache_key(model, dataset, "exact", 1, 0))
    with caplog.at_level(logging.WARNING):
        again, _, source = load_or_compute_fisher(model, dataset, make_loader(dataset), str(tmp_path))
    assert source == "computed" and "has shape (3,)" in caplog.text
    assert all(torch.equal(again[name], reference[name]) for name in reference)


@pytest.mark.parametrize("other", ["forget data", "estimator", "weights"])
def test_a_sound_cache_file_of_another_key_renamed_to_this_one_is_set_aside(setup, tmp_path, caplog, other):
    """A valid Fisher computed for another forget set (or estimator, or weights), stored under this key's name: it
    passes every check of its own but records what it was computed for, so it is set aside, not used."""
    model, dataset = setup
    reference, _, _ = load_or_compute_fisher(model, dataset, make_loader(dataset), str(tmp_path / "clean"))
    path = fisher_cache_path(str(tmp_path), model, dataset, "exact", 1, 0)
    if other == "forget data":
        other_data = DictDataset(dataset.images[:8], dataset.labels[:8])
        load_or_compute_fisher(model, other_data, make_loader(other_data), str(tmp_path))
        foreign = fisher_cache_path(str(tmp_path), model, other_data, "exact", 1, 0)
    elif other == "estimator":
        load_or_compute_fisher(model, dataset, make_loader(dataset), str(tmp_path), estimator="empirical")
        foreign = fisher_cache_path(str(tmp_path), model, dataset, "empirical", 1, 0)
    else:
        other_model = trained_bn_stats(TinyConvNet(3), random_images(12))
        load_or_compute_fisher(other_model, dataset, make_loader(dataset), str(tmp_path))
        foreign = fisher_cache_path(str(tmp_path), other_model, dataset, "exact", 1, 0)
    os.replace(foreign, path)
    assert load_checked(path, None, "Fisher cache file") is not None  # sound on its own

    with caplog.at_level(logging.WARNING):
        again, _, source = load_or_compute_fisher(model, dataset, make_loader(dataset), str(tmp_path))

    assert source == "computed"
    assert all(torch.equal(again[name], reference[name]) for name in reference)
    expected = {"forget data": "forget_data", "estimator": "estimator", "weights": "model_weights_sha256"}[other]
    assert f"Not using the Fisher cache file {path}: it was computed for another " in caplog.text
    assert expected in caplog.text.split(f"Not using the Fisher cache file {path}")[1].split("\n")[0]
    assert len(set_aside(tmp_path)) == 1
    with safe_open(path, framework="pt") as f:  # the cache now holds this key's Fisher, recording its key
        assert json.loads(f.metadata()[KEY_FIELD]) == fisher_cache_key(model, dataset, "exact", 1, 0)
    assert load_or_compute_fisher(model, dataset, make_loader(dataset), str(tmp_path))[2] == "cached"


class Interrupted(Exception):
    pass


def interrupt_fisher(model, dataset, cache_dir: str) -> str:
    """Compute the Fisher with partial sums saved after every batch and stop it after two of three batches, as a
    killed run would; returns the partial file's path (where `load_or_compute_fisher` looks for it)."""
    partial = fisher_partial_sums(cache_dir, fisher_cache_key(model, dataset, "exact", 1, 0), BATCH)
    assert partial.path == fisher_partial_path(fisher_cache_path(cache_dir, model, dataset, "exact", 1, 0), BATCH)

    def batches():
        for index, batch in enumerate(DataLoader(dataset, batch_size=BATCH)):
            if index == 2:
                raise Interrupted
            yield batch

    with pytest.raises(Interrupted):
        compute_fisher_diagonal(model, batches(), partial_path=partial, checkpoint_seconds=0, show_progress=False)
    assert os.path.exists(partial.path)
    return partial.path


def test_an_interrupted_fisher_resumes_from_sound_partial_sums_with_its_earlier_time(setup, tmp_path):
    model, dataset = setup
    reference = compute_fisher_diagonal(model, DataLoader(dataset, batch_size=BATCH), show_progress=False)
    partial = interrupt_fisher(model, dataset, str(tmp_path))
    earlier = load_checked(partial, None, "partial Fisher")[1]

    resumed, seconds, source = load_or_compute_fisher(model, dataset, make_loader(dataset), str(tmp_path))

    assert source == "resumed" and seconds > earlier > 0
    assert all(torch.equal(resumed[name], reference[name]) for name in reference)
    assert not os.path.exists(partial)


@pytest.mark.parametrize("kind", ["nan-values", "truncated", "random-bytes"])
def test_a_corrupted_partial_is_set_aside_not_promoted_to_the_cache(setup, tmp_path, caplog, kind):
    model, dataset = setup
    reference = compute_fisher_diagonal(model, DataLoader(dataset, batch_size=BATCH), show_progress=False)
    partial = interrupt_fisher(model, dataset, str(tmp_path))
    if kind == "nan-values":
        overwrite_values(partial, "sum.head.weight", float("nan"))
    else:
        corrupt(partial, kind)

    with caplog.at_level(logging.WARNING):
        fisher, _, source = load_or_compute_fisher(model, dataset, make_loader(dataset), str(tmp_path))

    assert source == "computed"  # from the first batch, not from the bad sums
    assert f"Not using the partial Fisher {partial}" in caplog.text
    assert all(torch.equal(fisher[name], reference[name]) for name in reference)
    cached = load_checked(fisher_cache_path(str(tmp_path), model, dataset, "exact", 1, 0), None, "Fisher cache file")
    assert all(torch.equal(cached[0][name], reference[name]) for name in reference)
    assert len(set_aside(tmp_path)) == 1


def test_a_non_finite_fisher_is_refused_not_cached(setup, tmp_path):
    model, dataset = setup
    dataset.images[5, 0, 0, 0] = float("nan")  # one bad image: its scores, so the Fisher, are NaN
    with pytest.raises(ValueError, match="Fisher computed on the forget data is not finite.*NaN or infinite pixel"):
        load_or_compute_fisher(model, dataset, make_loader(dataset), str(tmp_path))
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".safetensors")]
