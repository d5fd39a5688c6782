"""Pushing an unlearned model: end to end over HTTP to a recording Hub on 127.0.0.1, and every failure leaves
the local folder as it was with one clear `HubPushError`."""

import copy
import hashlib
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, constants
from recording_hub import RecordingHub
from tiny_unlearning_run import shared_base_model_dir, shared_unlearning_run

from hf_pbu import PBUConfig
from hf_pbu.io.model_card import write_model_card
from hf_pbu.io.publish import HubPushError, push_unlearned_model
from hf_pbu.results import RESULTS_FILE

REPO_ID = "me/tiny-digits-unlearned"
PUBLISHED = {"README.md", "config.json", "model.safetensors", RESULTS_FILE, "per_class_accuracy.png"}


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    """A copy of the shared real run, with its card written and the working files a run leaves beside them."""
    folder, results, config, names = shared_unlearning_run()
    config = hub_config(config, hub_model_id=REPO_ID)
    output_dir = tmp_path / "tiny-digits-unlearned"
    shutil.copytree(folder, output_dir)
    base_card = ModelCard("---\nlicense: apache-2.0\n---\n# A tiny digits classifier\n")
    write_model_card(str(output_dir), results, config, "timm", "org/tiny-digits", label_names=names,
                     dataset_name="sklearn-digits", base_card=base_card)
    for working_file in ("checkpoint-5/optimizer.pt", "checkpoints/state.json", "runs/Nov24/events.out"):
        (output_dir / working_file).parent.mkdir(parents=True, exist_ok=True)
        (output_dir / working_file).write_text("not for the Hub")
    return output_dir


@pytest.fixture
def hub_settings(monkeypatch, tmp_path):
    """No token from the environment or a login, online mode, no waiting between huggingface_hub's retries;
    returns a setter for the Hub endpoint."""
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return lambda endpoint: monkeypatch.setattr(constants, "ENDPOINT", endpoint)


def hub_config(config: PBUConfig, **hub_args) -> PBUConfig:
    """A copy of `config` with the `hub_*` arguments set, as `--hub_model_id ...` would give."""
    config = copy.copy(config)
    for name, value in hub_args.items():
        setattr(config, name, value)
    return config


def push_config(**hub_args) -> PBUConfig:
    return hub_config(shared_unlearning_run()[2], **{"hub_model_id": REPO_ID, **hub_args})


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_push_uploads_the_model_card_and_results(output_dir, hub_settings):
    config = push_config(hub_token="hf_test_token", hub_private_repo=True)
    before = file_hashes(output_dir)
    with RecordingHub() as hub:
        hub_settings(hub.endpoint)
        url = push_unlearned_model(str(output_dir), config)

    assert url == f"{hub.endpoint}/{REPO_ID}"
    assert hub.created_repos == [
        {"name": "tiny-digits-unlearned", "organization": "me", "visibility": "private"}
    ]
    assert {
        auth
        for (_, path), auth in zip(hub.requests, hub.authorizations)
        if "/api/repos/" in path or "/api/models/" in path
    } == {"Bearer hf_test_token"}
    assert [commit["repo"] for commit in hub.commits] == [REPO_ID]
    assert hub.validated_cards == [
        (output_dir / "README.md").read_text()
    ]  # the card's metadata passed validation
    assert set(hub.uploaded) == PUBLISHED  # checkpoints and logs stay local
    for name in PUBLISHED:
        assert hub.uploaded[name] == (output_dir / name).read_bytes()
    card = ModelCard(hub.uploaded["README.md"].decode())
    assert card.data.base_model == "org/tiny-digits"
    assert {"machine-unlearning", "pbu"} <= set(card.data.tags)
    assert card.data.eval_results and f'timm.create_model("hf-hub:{REPO_ID}"' in card.text
    assert file_hashes(output_dir) == before


def test_push_to_a_branch_creates_it_and_commits_there(output_dir, hub_settings):
    config = push_config(hub_token="hf_test_token", hub_revision="pbu-unlearned")
    with RecordingHub() as hub:
        hub_settings(hub.endpoint)
        push_unlearned_model(str(output_dir), config)
    assert hub.branches == [(REPO_ID, "pbu-unlearned")]
    assert [(commit["repo"], commit["revision"]) for commit in hub.commits] == [(REPO_ID, "pbu-unlearned")]


def test_no_token_fails_before_any_request(output_dir, hub_settings):
    config = push_config()
    before = file_hashes(output_dir)
    with RecordingHub() as hub:
        hub_settings(hub.endpoint)
        with pytest.raises(HubPushError, match="no Hugging Face token") as error:
            push_unlearned_model(str(output_dir), config)
    message = str(error.value)
    assert "hf auth login" in message and "--hub_token" in message and str(output_dir) in message
    assert hub.requests == []
    assert file_hashes(output_dir) == before


@pytest.mark.parametrize(
    ("status", "fail_on", "expected"),
    [(403, "/commit/", "HTTP 403"), (401, "", "HTTP 401"), (503, "/commit/", "HTTP 503")],
    ids=["403-on-commit", "401-on-create", "503-on-commit-after-retries"],
)
def test_refused_upload_is_one_clear_error(output_dir, hub_settings, status, fail_on, expected):
    config = push_config(hub_token="hf_test_token")
    before = file_hashes(output_dir)
    with RecordingHub(refuse_status=status, fail_on=fail_on) as hub:
        hub_settings(hub.endpoint)
        with pytest.raises(HubPushError, match=expected) as error:
            push_unlearned_model(str(output_dir), config)
    message = str(error.value)
    assert "Nothing local was deleted or changed" in message and f"hf upload {REPO_ID}" in message
    assert hub.commits == []
    assert file_hashes(output_dir) == before


def test_invalid_repo_id_is_one_clear_error(output_dir, hub_settings):
    config = push_config(hub_model_id="me/not a valid name", hub_token="hf_test_token")
    before = file_hashes(output_dir)
    with RecordingHub() as hub:
        hub_settings(hub.endpoint)
        with pytest.raises(HubPushError, match="refused the request.*Repo id must"):
            push_unlearned_model(str(output_dir), config)
    assert hub.commits == []
    assert file_hashes(output_dir) == before


@pytest.mark.parametrize("where", ["dropped-during-upload", "nothing-listening"])
def test_dropped_connection_is_one_clear_error(output_dir, hub_settings, where):
    config = push_config(hub_token="hf_test_token")
    before = file_hashes(output_dir)
    with RecordingHub(drop_connections=True, fail_on="/commit/") as hub:
        hub_settings(
            hub.endpoint if where == "dropped-during-upload" else f"http://127.0.0.1:{unused_port()}"
        )
        with pytest.raises(HubPushError, match="connection to the Hub failed") as error:
            push_unlearned_model(str(output_dir), config)
    assert "upload_folder" in str(error.value)
    if where == "dropped-during-upload":
        assert hub.created_repos and hub.commits == []
        assert (
            sum("/commit/" in path for _, path in hub.requests) > 1
        )  # huggingface_hub retried before giving up
    assert file_hashes(output_dir) == before


def test_the_command_in_the_error_pushes_the_folder_later(output_dir, hub_settings):
    config = push_config(hub_token="hf_test_token")
    with RecordingHub(drop_connections=True, fail_on="/commit/") as hub:
        hub_settings(hub.endpoint)
        with pytest.raises(HubPushError) as error:
            push_unlearned_model(str(output_dir), config)
    command = re.search(r"`(hf upload [^`]+)`", str(error.value))[1]
    hf = Path(sys.executable).with_name("hf")
    with RecordingHub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_test_token", "HF_HUB_OFFLINE": "0"}
        subprocess.run([str(hf), *shlex.split(command)[1:]], env=env, check=True, capture_output=True)
    assert set(hub.uploaded) == PUBLISHED


def _library_run(tmp_path: Path, measured: bool):
    """A library user's run: the tiny digits model as a Hub timm model (its pretrained config names the resolved
    repo), unlearned by `PBUTrainer` directly or through `hf_pbu.unlearn` (which measures before and after)."""
    import timm
    from tiny_unlearning_run import FORGET_CLASSES

    from hf_pbu import PBUTrainer, unlearn

    _, _, config, names = shared_unlearning_run()
    model = timm.create_model(f"local-dir:{shared_base_model_dir()}", pretrained=True,
                              pretrained_cfg_overlay={"hf_hub_id": "org/tiny-digits.v1"})
    splits = _digits_splits(model)
    config = hub_config(config, output_dir=str(tmp_path / "library-run"), hub_model_id=REPO_ID,
                        hub_token="hf_test_token", push_to_hub=True, max_steps=3)
    if measured:
        trainer, results = unlearn(model, config, splits, FORGET_CLASSES)
    else:
        trainer = PBUTrainer(model=model, args=config, train_dataset=splits["forget_train"])
        trainer.train()
    return trainer, names


def _digits_splits(model) -> dict:
    from datasets import DatasetDict
    from offline_data import digits_dataset
    from tiny_unlearning_run import FORGET_CLASSES

    from hf_pbu.data import unlearning_splits, with_image_transform
    from hf_pbu.models import eval_transform

    digits = digits_dataset()
    data = DatasetDict(train=digits["train"].select(range(300)), test=digits["test"].select(range(100)))
    transform = eval_transform(model)
    return {k: with_image_transform(v, transform)
            for k, v in unlearning_splits(data, FORGET_CLASSES, retain_train_samples=100).items()}


@pytest.mark.parametrize("measured", [True, False], ids=["through-unlearn", "trainer-alone"])
def test_a_library_users_trainer_publishes_the_model_with_the_unlearning_card(tmp_path, hub_settings, measured):
    """`trainer.push_to_hub()` in a user's own script: the model in timm's layout, our card (resolved base model,
    tags, model-index when measured) matching the results file, one upload at the end, the library's user agent."""
    from hf_pbu.results import UnlearningResults

    trainer, names = _library_run(tmp_path, measured)
    with RecordingHub() as hub:
        hub_settings(hub.endpoint)
        url = trainer.push_to_hub(dataset_name="sklearn-digits")

    assert url == f"{hub.endpoint}/{REPO_ID}"
    assert len(hub.commits) == 1
    assert {"README.md", "config.json", "model.safetensors", RESULTS_FILE} <= set(hub.uploaded)
    output_dir = Path(trainer.args.output_dir)
    card = ModelCard.load(output_dir / "README.md")
    assert hub.uploaded["README.md"].decode() == str(card)
    assert card.data.base_model == "org/tiny-digits.v1"
    assert card.data.to_dict()["base_model_relation"] == "finetune"
    assert {"machine-unlearning", "class-unlearning", "pbu", "timm"} <= set(card.data.tags)
    assert card.data.library_name == "timm" and card.data.datasets == ["sklearn-digits"]
    results = UnlearningResults.load(str(output_dir))
    assert results.forget_classes == [3] and results.steps == trainer.state.global_step
    assert f"| 3 | {names[3]} |" in card.text
    if measured:
        evals = {e.metric_name: e.metric_value for e in card.data.eval_results}
        assert evals and all(isinstance(v, float) for v in evals.values())
        assert pytest.approx(results.after.retain_test_accuracy) in evals.values()
        assert pytest.approx(results.after.forget_test_accuracy) in evals.values()
    else:
        assert card.data.eval_results is None and "This run was not measured" in card.text
    assert any(agent and "hf_pbu/" in agent for agent in hub.user_agents)
    import timm

    reloaded = timm.create_model(f"local-dir:{output_dir}", pretrained=True)
    assert torch.equal(reloaded.state_dict()["fc.weight"], trainer.model.state_dict()["fc.weight"].cpu())
