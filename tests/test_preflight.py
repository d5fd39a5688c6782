"""What the command line refuses before it loads a model or data: an output folder it cannot write, `--push_to_hub`
without its prerequisites, a checkpoint to resume that is not complete."""

import subprocess

import huggingface_hub
import pytest
from test_unlearn_script import _script

import hf_pbu.cli.unlearn
from hf_pbu import PBUConfig
from hf_pbu.io.model_card import hub_repo_id


@pytest.fixture
def nothing_loaded(monkeypatch):
    monkeypatch.setattr(hf_pbu.cli.unlearn, "load_classifier", lambda *a, **k: pytest.fail("the model was loaded"))


@pytest.fixture
def hub_online_without_token(monkeypatch, tmp_path):
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def refused(output_dir, *extra) -> str:
    with pytest.raises(SystemExit) as exit_info:
        _script().main(["--model_id", "org/tiny-timm", "--forget_class", "1", "--output_dir", str(output_dir), *extra])
    message = str(exit_info.value.code)
    assert message.startswith("error: "), message
    return message


@pytest.fixture
def read_only_folder(tmp_path):
    """An existing output folder, with a file in it, that nobody may write to: a read-only bind mount (permissions
    do not stop root), or, for other users, mode 0555."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    (folder / "notes.txt").write_text("kept")
    if subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() != "0":
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0
    if not mounted or subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True).returncode:
        if mounted:
            subprocess.run(["umount", str(folder)], check=False)
        pytest.skip("cannot make a read-only folder here (root without mount permission)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_output_folder_is_refused_before_anything_is_loaded(read_only_folder, nothing_loaded):
    message = refused(read_only_folder)
    assert f"--output_dir {read_only_folder} is not writable" in message and "choose another --output_dir" in message
    assert [p.name for p in read_only_folder.iterdir()] == ["notes.txt"]


def test_an_output_dir_that_is_a_file_is_refused(tmp_path, nothing_loaded):
    (tmp_path / "out").write_text("a file")
    assert f"--output_dir {tmp_path / 'out'} is a file, not a folder" in refused(tmp_path / "out")


def test_push_without_a_token_is_refused_before_anything_is_loaded(tmp_path, hub_online_without_token, nothing_loaded):
    message = refused(tmp_path / "out", "--push_to_hub", "--hub_model_id", "me/model")
    assert "--push_to_hub needs a Hugging Face token" in message and "hf auth login" in message
    assert not (tmp_path / "out").exists()


def test_push_when_offline_is_refused_before_anything_is_loaded(tmp_path, hub_online_without_token, monkeypatch,
                                                                nothing_loaded):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    message = refused(tmp_path / "out", "--push_to_hub", "--hub_model_id", "me/model", "--hub_token", "hf_x")
    assert "HF_HUB_OFFLINE is set" in message


@pytest.mark.parametrize(("extra", "expected"), [
    (["--hub_model_id", "me/not a valid name"], "--hub_model_id gives 'me/not a valid name', not a valid Hub repo"),
    (["--hub_model_id", "me/a--b"], "--hub_model_id gives 'me/a--b'"),
], ids=["space", "double-dash"])
def test_an_invalid_repo_id_is_refused_before_anything_is_loaded(tmp_path, hub_online_without_token, nothing_loaded,
                                                                 extra, expected):
    message = refused(tmp_path / "out", "--push_to_hub", "--hub_token", "hf_x", *extra)
    assert expected in message and "Pass --hub_model_id <namespace>/<name>" in message


def test_the_repo_id_comes_from_the_real_folder_name(tmp_path, hub_online_without_token, nothing_loaded):
    assert hub_repo_id(str(tmp_path / "my-model" / "sub" / ".."), PBUConfig(output_dir="x")) == "my-model"
    assert hub_repo_id("a/b/../", PBUConfig(output_dir="x")) == "a"
    # A folder whose name is not a repository name, without --hub_model_id: refused up front.
    odd = tmp_path / "my model (v2)"
    message = refused(odd / "x" / "..", "--push_to_hub", "--hub_token", "hf_x")
    assert "--output_dir's folder name (the repository id by default) gives 'my model (v2)'" in message


def test_an_incomplete_checkpoint_to_resume_is_refused_before_anything_is_loaded(tmp_path, nothing_loaded):
    checkpoint = tmp_path / "out" / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"half")
    message = refused(tmp_path / "out", "--resume_from_checkpoint", str(checkpoint))
    assert f"Cannot resume {checkpoint}: it has no pbu_checkpoint.json" in message
