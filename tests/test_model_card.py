"""The card of an unlearned model, rendered from a real PBU run and read back as the Hub reads it."""

import copy
import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
import timm
import torch
from hub_fixtures import populate_hf_cache
from huggingface_hub import ModelCard, ModelCardData, constants
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results
from tiny_unlearning_run import shared_unlearning_run

from hf_pbu.evidence import ATTACKS, SUITE
from hf_pbu.io.model_card import (
    ACCURACY_ROWS,
    METRIC_NAMES,
    base_model_of,
    card_dataset,
    load_base_card,
    model_class_names,
    write_model_card,
)
from hf_pbu.results import RESULTS_FILE

BASE_CARD = ModelCard("---\nlicense: apache-2.0\nlibrary_name: timm\n---\n# A tiny digits classifier\n")


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, dict, object, list[str]]:
    """A copy of the shared run's folder (weights, unlearning_results.json); its results, config, labels."""
    folder, results, config, names = shared_unlearning_run()
    output_dir = tmp_path / "tiny-digits-unlearned"
    shutil.copytree(folder, output_dir)
    return output_dir, copy.deepcopy(results), config, names


def table_rows(text: str) -> dict[str, list[str]]:
    """Cells of the before/after table (the one whose header starts with `| Metric |`), by row label."""
    lines = text[text.index("| Metric |") :].splitlines()
    rows = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        label, *cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[label] = cells
    return rows


def test_card_of_a_real_run_parses_back_with_metadata_and_table_matching_results(run):
    output_dir, results, config, names = run
    card = write_model_card(
        str(output_dir), results, config, "timm", "org/tiny-digits", label_names=names, dataset_name="sklearn-digits",
        base_card=BASE_CARD,
    )

    loaded = ModelCard.load(output_dir / "README.md")
    assert str(loaded) == str(card)
    saved = json.loads((output_dir / RESULTS_FILE).read_text())

    # Metadata: strict re-validation (no ignore_metadata_errors) and the Hub-side fields.
    data = loaded.data
    ModelCardData(**data.to_dict())
    assert data.base_model == "org/tiny-digits"
    assert data.to_dict()["base_model_relation"] == "finetune"
    assert data.library_name == "timm"
    assert data.license == "apache-2.0"
    assert data.pipeline_tag == "image-classification"
    assert data.datasets == ["sklearn-digits"]
    assert {"machine-unlearning", "class-unlearning", "pbu", "image-classification", "timm"} <= set(data.tags)

    # model-index: survives the Hub's EvalResult round trip and holds the after-unlearning A_Df and A_Dr.
    model_index = data.to_dict()["model-index"]
    name, evals = model_index_to_eval_results(model_index)
    assert eval_results_to_model_index(name, evals) == model_index
    by_name = {result.metric_name: result for result in evals}
    for key in ("forget_test_accuracy", "retain_test_accuracy"):
        result = by_name[METRIC_NAMES[key]]
        assert result.task_type == "image-classification" and result.metric_type == "accuracy"
        assert result.metric_value == pytest.approx(saved["after"][key])

    # The table shows unlearning_results.json's numbers.
    rows = table_rows(loaded.text)
    for label, key in ACCURACY_ROWS:
        assert [float(cell) for cell in rows[label]] == [
            pytest.approx(saved[when][key], abs=0.005) for when in ("before", "after")
        ]
    for attack, value in (saved["after"]["mia"] or {}).items():
        assert any(
            attack in label and float(cells[1]) == pytest.approx(value, abs=0.005)
            for label, cells in rows.items()
        )

    text = loaded.text
    assert "[org/tiny-digits](https://huggingface.co/org/tiny-digits)" in text
    for class_id in saved["forget_classes"]:
        assert f"| {class_id} | {names[class_id]} |" in text
    assert f"{saved['forget_train_samples']} training images of the forgotten class" in text
    assert "A_Df and A_Dr on the `test` split" in text
    assert f"Fisher diagonal: {saved['fisher_seconds']:.1f} s" in text
    assert f"| alpha (weight of the forget term on the forget data) | {config.alpha:g} |" in text
    assert f'timm.create_model("hf-hub:{output_dir.name}", pretrained=True)' in text
    title = "Partially Blinded Unlearning: Class Unlearning for Deep Networks a Bayesian Perspective"
    assert f"title     = {{{title}}}" in text
    assert "not a certified" in text.replace("**", "")


def test_missing_measurements_and_names_mia_and_transformers_family(run, tmp_path):
    output_dir, results, config, _ = run
    results.after.forget_test_accuracy = None  # no test images of the forgotten class
    results.stopped_at_step = None
    results.after.mia = {"entropy_svc": 12.5, "loss_logistic": None}
    base_dir = tmp_path / "local-base"
    base_dir.mkdir()
    (base_dir / "README.md").write_text("---\nlicense: mit\n---\n# Local base\n")

    paper = dataclasses.replace(config, forget_loss="neg_ce")  # its stop rule: the forget accuracy
    card = write_model_card(str(output_dir), results, paper, "transformers", None, "local-base",
                            base_card=load_base_card(str(base_dir)))
    loaded = ModelCard.load(output_dir / "README.md")

    assert loaded.data.license == "mit"  # carried from the local base model's card
    assert loaded.data.base_model is None  # a local folder is not a Hub id
    assert loaded.data.library_name == "transformers" and "timm" not in loaded.data.tags
    evals = {result.metric_name: result.metric_value for result in loaded.data.eval_results}
    assert METRIC_NAMES["forget_test_accuracy"] not in evals  # None is not reported as a number
    assert evals[METRIC_NAMES["retain_test_accuracy"]] == pytest.approx(results.after.retain_test_accuracy)
    assert [value for name, value in evals.items() if "entropy_svc" in name] == [12.5]
    assert not any("loss_logistic" in name for name in evals)

    rows = table_rows(loaded.text)
    assert rows[ACCURACY_ROWS[0][0]][1] == "n/a"  # after: not measured
    assert re.search(r"entropy_svc.*\| 12\.50 \|", loaded.text)
    assert "was **not** met" in loaded.text
    assert "`local-base`" in loaded.text
    assert f"| {results.forget_classes[0]} | (unnamed) |" in loaded.text  # the checkpoint named no classes
    assert f'AutoModelForImageClassification.from_pretrained("{output_dir.name}")' in loaded.text
    assert str(loaded) == str(card)


def test_license_is_carried_from_the_base_models_card_in_the_hf_cache(run, tmp_path, monkeypatch):
    output_dir, results, config, names = run
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n# Base\n")
    cache = tmp_path / "hf_cache"
    populate_hf_cache(str(cache), "org/licensed-base", str(base))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    write_model_card(str(output_dir), results, config, "timm", "org/licensed-base", label_names=names,
                     base_card=load_base_card("org/licensed-base"))
    loaded = ModelCard.load(output_dir / "README.md")
    assert loaded.data.license == "cc-by-nc-4.0"
    assert loaded.data.base_model == "org/licensed-base"
    # Offline with no cached card: written all the same, without a license.
    write_model_card(str(output_dir), results, config, "timm", "org/not-cached", label_names=names,
                     base_card=load_base_card("org/not-cached"))
    assert ModelCard.load(output_dir / "README.md").data.license is None


def test_unknown_family_is_refused(run):
    output_dir, results, config, names = run
    with pytest.raises(ValueError, match="'timm' or 'transformers'"):
        write_model_card(str(output_dir), results, config, "keras", "org/x", label_names=names, base_card=BASE_CARD)


@pytest.mark.parametrize(
    ("dataset_name", "dataset_dir", "expected"),
    [
        ("food101", None, ("food101", True)),
        ("imagefolder", "/data/my_digits/", ("my_digits", False)),
        (None, "/data/saved_digits", ("saved_digits", False)),
        (None, None, (None, False)),
    ],
)
def test_card_dataset_keeps_local_data_out_of_the_metadata(dataset_name, dataset_dir, expected):
    assert card_dataset(dataset_name, dataset_dir) == expected


def test_card_of_local_data_held_out_of_train_says_so(run, tmp_path):
    output_dir, results, config, names = run
    saved = tmp_path / "saved_digits"
    saved.mkdir()
    results.eval_split, results.eval_holdout_fraction = "train", 0.2
    dataset_name, hub_dataset = card_dataset(str(saved), None)
    write_model_card(str(output_dir), results, config, "timm", "org/x", label_names=names, dataset_name=dataset_name,
                     base_card=BASE_CARD, hub_dataset=hub_dataset)
    loaded = ModelCard.load(output_dir / "README.md")
    assert loaded.data.datasets is None
    assert "(`saved_digits`)" in loaded.text
    assert "A_Df and A_Dr on 20% of the `train` split held out" in loaded.text
    assert "only meaningful if the base model was not trained on" in loaded.text
    assert {result.dataset_split for result in loaded.data.eval_results} == {"train"}


def test_card_names_a_bounded_forget_term_and_how_it_differs_from_the_paper(run):
    output_dir, results, config, _ = run
    results.stopped_at_step = results.steps  # the stop rule ended the run
    for loss, level, note in (("neg_ce", "output", False), ("relabel+distill", "output", True),
                              ("relabel+distill", "head", True)):
        bounded = dataclasses.replace(config, forget_loss=loss, forget_level=level)
        write_model_card(str(output_dir), results, bounded, "timm", "org/tiny-digits", base_card=BASE_CARD)
        text = ModelCard.load(output_dir / "README.md").text

        assert f"| Forget term (`forget_loss`) | {loss}: " in text
        assert ("replaced the paper's -CE forget term with `relabel+distill`" in text) == note
        assert ("The objective stopped falling at step" in text) == (note and level == "output")
        assert ("refit until each forgotten class ranked last" in text) == (level == "head")
        assert ("the forgotten classes ranked last on all but" in text) == (level == "head")


def test_the_base_model_is_the_resolved_hub_repo_or_none_for_a_local_one(tmp_path):
    """The card's `base_model` is the repo the weights came from: `timm/<arch>` resolves to timm's default pretrained
    tag, timm's prefixes and revisions are dropped, a local folder is named but not linked; with no source, the
    model's own record (timm's `hf_hub_id`, transformers' `_name_or_path`)."""
    from transformers import ResNetConfig, ResNetForImageClassification

    model = torch.nn.Linear(2, 2)
    resolved = timm.models.get_pretrained_cfg("resnet18").hf_hub_id
    assert resolved != "timm/resnet18"
    assert base_model_of(model, "timm/resnet18") == (resolved, None)
    assert base_model_of(model, "hf-hub:org/tiny-digits@main") == ("org/tiny-digits", None)
    assert base_model_of(model, f"local-dir:{tmp_path}") == (None, tmp_path.name)
    assert base_model_of(model, str(tmp_path)) == (None, tmp_path.name)
    hub_timm = timm.create_model("test_resnet", pretrained=False, num_classes=3,
                                 pretrained_cfg_overlay={"hf_hub_id": "org/resnet.tag", "label_names": ("a", "b", "c")})
    assert base_model_of(hub_timm) == ("org/resnet.tag", None)
    assert model_class_names(hub_timm) == ["a", "b", "c"]
    named = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], num_labels=2,
                                                      id2label={0: "cat", 1: "dog"}))
    named.config._name_or_path = "org/resnet-tiny"
    assert base_model_of(named) == ("org/resnet-tiny", None)
    assert model_class_names(named) == ["cat", "dog"]
    generic = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], num_labels=2))
    assert model_class_names(generic) is None  # LABEL_0, LABEL_1 name nothing


def test_card_shows_the_evidence_chart_confusion_and_attacks(run):
    """The shared run's card embeds its per-class chart (written beside it) and where the forgotten class's images
    go; with the attacks' figures, their table compares the original with the unlearned model."""
    output_dir, results, config, names = run
    assert results.evidence["chart"] == "per_class_accuracy.png"
    assert (output_dir / results.evidence["chart"]).read_bytes().startswith(b"\x89PNG")
    cheap = [attack.name for attack in SUITE if not attack.costly]
    assert list(results.evidence["attacks"]) == cheap  # the cheap attacks run in every run with retain data
    results.evidence["attacks"]["relearn_strong"] = {"before": {"forget_test_accuracy": 95.0},
                                                     "after": {"forget_test_accuracy": 0.0}}
    write_model_card(str(output_dir), results, config, "timm", "org/tiny-digits", label_names=names,
                     base_card=BASE_CARD)
    card = ModelCard.load(output_dir / "README.md")
    assert "![Per-class test accuracy before and after unlearning](per_class_accuracy.png)" in card.text
    forgotten = names[results.forget_classes[0]]
    assert re.search(rf"\| {re.escape(forgotten)} \| .*%", card.text)
    assert re.search(r"\| Whole-model relearn, strong: 100 steps at lr 0.001 on 10 images per class \| row \(reported: "
                     r"a retrained model reads high too\) \| 95\.00 \| 0\.00 \|", card.text)
    for name in cheap:  # one row each, with both figures
        assert re.search(rf"\| {re.escape(ATTACKS[name].label)} \| (row|features).* \| \d+\.\d\d \| \d+\.\d\d \|",
                         card.text), name
    level = results.evidence["forgetting_level"]
    assert re.search(r"\*\*Where the class was forgotten: (output|head|features)\.\*\* The class is ", card.text)
    assert f"Attacks run: {', '.join(level['attacks_run'])} (the cheap ones;" in card.text
    ModelCardData(**card.data.to_dict())  # the metadata still validates
