"""Offline stand-ins for the Hugging Face Hub: tiny classifiers saved in their real Hub layouts, an HF cache
populated with them, git repos served by `olah` as a read-only Hub, and image folders on disk.

Every helper writes what a user's machine would hold after a real download, so the code under test takes the
same path as with a Hub id.
"""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import timm
from datasets import DatasetDict
from timm.models import save_for_hf

TINY_INPUT = {"input_size": (3, 32, 32), "crop_pct": 1.0, "interpolation": "bilinear",
              "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def fit_to_digits(model, transform, classes: int) -> None:
    """Train `model` briefly (seconds) on scikit-learn's digits 0..classes-1, so that it recognises them as a
    user's model recognises its classes: a run refuses to unlearn a class its model scores near chance on."""
    import tempfile

    from classifier_training import ClassifierTrainer
    from offline_data import digits_dataset
    from transformers import TrainingArguments

    from hf_pbu.data import with_image_transform

    train = digits_dataset()["train"].filter(lambda label: label < classes, input_columns="label")
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(output_dir=output_dir, num_train_epochs=4, learning_rate=3e-3,
                                 per_device_train_batch_size=32, save_strategy="no", report_to="none",
                                 remove_unused_columns=False, use_cpu=True, disable_tqdm=True)
        ClassifierTrainer(model=model, args=args, train_dataset=with_image_transform(train, transform)).train()
    model.cpu().eval()


def save_tiny_timm(folder: str, names: list[str], seed: int = 0) -> str:
    """timm's `test_resnet`, narrowed (25k parameters), with len(names) classes at 32x32, fitted to the first
    digits (`fit_to_digits`) and saved with `save_for_hf` (timm's Hub layout; the narrowing is stored in
    config.json's model_args)."""
    import torch

    from hf_pbu.models import eval_transform

    torch.manual_seed(seed)
    narrow = {"channels": (8, 16, 16, 16), "stem_width": 8}
    model = timm.create_model("test_resnet", num_classes=len(names), pretrained_cfg_overlay=TINY_INPUT, **narrow)
    fit_to_digits(model, eval_transform(model), len(names))
    save_for_hf(model, folder, model_config={"label_names": list(names)}, model_args=narrow, safe_serialization=True)
    return folder


def save_tiny_transformers(folder: str, names: list[str], seed: int = 0) -> str:
    """A two-stage transformers ResNet with a ConvNeXt-style image processor, fitted to the first digits
    (`fit_to_digits`) and saved with `save_pretrained`."""
    import torch
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    from hf_pbu.models import processor_transform

    torch.manual_seed(seed)
    config = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=len(names),
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )
    model = ResNetForImageClassification(config)
    processor = ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875, image_mean=[0.5] * 3,
                                       image_std=[0.5] * 3)
    fit_to_digits(model, processor_transform(processor), len(names))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_card(folder: str, datasets: list[str]) -> None:
    """A README.md whose metadata names `datasets`, as on a Hub model page."""
    lines = "".join(f"  - {name}\n" for name in datasets)
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write(f"---\ndatasets:\n{lines}---\n# Tiny test classifier\n")


def populate_hf_cache(cache_dir: str, repo_id: str, folder: str) -> str:
    """Copy `folder` into `cache_dir` as the HF cache holds a downloaded model repo
    (models--org--name/{blobs,snapshots/<commit>,refs/main}); returns the snapshot folder."""
    repo_dir = os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = os.path.join(repo_dir, "snapshots", commit)
    os.makedirs(os.path.join(repo_dir, "blobs"), exist_ok=True)
    os.makedirs(os.path.join(repo_dir, "refs"), exist_ok=True)
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), "rb") as f:
            blob = os.path.join(repo_dir, "blobs", hashlib.sha256(f.read()).hexdigest())
        shutil.copyfile(os.path.join(folder, name), blob)
        os.makedirs(snapshot, exist_ok=True)
        os.symlink(os.path.relpath(blob, snapshot), os.path.join(snapshot, name))
    with open(os.path.join(repo_dir, "refs", "main"), "w") as f:
        f.write(commit)
    return snapshot


def git_mirror(mirrors_dir: str, repo_id: str, folder: str) -> str:
    """`folder` committed as a git repo at mirrors_dir/models/org/name, the layout `olah` serves as a Hub repo."""
    repo = os.path.join(mirrors_dir, "models", repo_id)
    shutil.copytree(folder, repo)
    preprocessor = os.path.join(repo, "preprocessor_config.json")
    if os.path.isfile(preprocessor):
        # olah answers 401 (not the Hub's 404) for a file missing from a mirrored repo, and transformers reads
        # that as "no such repo" when it probes for processor_config.json: ship one, in transformers' nested form.
        with open(preprocessor) as f, open(os.path.join(repo, "processor_config.json"), "w") as out:
            json.dump({"image_processor": json.load(f)}, out, indent=2)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for command in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "upload"]):
        subprocess.run(["git", *command], cwd=repo, env=env, check=True)
    return repo


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def olah_server(mirrors_dir: str, work_dir: str, timeout: float = 60.0) -> Iterator[str]:
    """Run `olah` offline on 127.0.0.1, serving the git repos under `mirrors_dir`; yields its HF_ENDPOINT."""
    port = _free_port()
    config = os.path.join(work_dir, "olah.toml")
    with open(config, "w") as f:
        f.write(f'[basic]\nhost = "127.0.0.1"\nport = {port}\nmirror-netloc = "127.0.0.1:{port}"\n'
                f'mirror-lfs-netloc = "127.0.0.1:{port}"\nrepos-path = "{work_dir}/repos"\n'
                f'mirrors-path = ["{mirrors_dir}"]\n\n[accessibility]\noffline = true\n')
    endpoint = f"http://127.0.0.1:{port}"
    with open(os.path.join(work_dir, "olah.log"), "w") as log:
        server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "olah-cli"), "-c", config],
                                  cwd=work_dir, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_until_up(endpoint, server, timeout, log.name)
            yield endpoint
        finally:
            server.terminate()
            server.wait(timeout=10)


def _wait_until_up(endpoint: str, server: subprocess.Popen, timeout: float, log_path: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=2)
            return
        except OSError as err:
            if getattr(err, "code", None):  # an HTTP error status: the server is up
                return
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"olah did not start ({err}); see {log_path}") from None
            time.sleep(0.3)


def export_imagefolder(data: DatasetDict, root: str, image_column: str = "image", label_column: str = "label") -> str:
    """Write each split as root/<split>/<class name>/<index>.png, the layout of `datasets`' imagefolder."""
    for split, dataset in data.items():
        names = dataset.features[label_column].names
        for index, row in enumerate(dataset):
            folder = os.path.join(root, split, names[row[label_column]])
            os.makedirs(folder, exist_ok=True)
            row[image_column].save(os.path.join(folder, f"{index:05d}.png"))
    return root
