"""The package as a user installs it: a wheel, installed outside the checkout, carries what a run needs (the card
template, the `evaluate` module) and the `hf-pbu` command."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Run from the installed copy only: a card written from the package's template, the evaluate module loaded by path
# from the package and computing A_Df/A_Dr, and the command's help.
INSTALLED_CHECK = textwrap.dedent(
    """
    import sys
    import hf_pbu
    from pathlib import Path
    site = Path(sys.argv[1]).resolve()
    assert Path(hf_pbu.__file__).resolve().is_relative_to(site), hf_pbu.__file__
    assert not any(Path(p).resolve() == Path(sys.argv[2]) for p in sys.path if p), "checkout on sys.path"

    from huggingface_hub import ModelCard
    from hf_pbu import Measurement, PBUConfig, UnlearningResults
    from hf_pbu.evidence.measurement import UNLEARNING_ACCURACY_METRIC, unlearning_accuracy_metric
    from hf_pbu.io.model_card import write_model_card

    assert Path(UNLEARNING_ACCURACY_METRIC).resolve().is_relative_to(site)
    scores = unlearning_accuracy_metric().compute(predictions=[0, 1, 2, 2], references=[0, 1, 1, 2], forget_classes=[1])
    assert scores == {"forget_accuracy": 50.0, "retain_accuracy": 100.0, "forget_samples": 2, "retain_samples": 2}

    results = UnlearningResults(
        forget_classes=[1], forget_train_samples=10, forget_loss="neg_ce", steps=3, stopped_at_step=3,
        before=Measurement(90.0, 95.0, 99.0), after=Measurement(0.0, 94.0, 0.0), eval_split="test",
    )
    write_model_card("card_out", results, PBUConfig(output_dir="card_out"), "timm", "org/base.tag",
                     label_names=["a", "b", "c"], base_card=ModelCard("---\\nlicense: mit\\n---\\n"))
    card = ModelCard.load("card_out/README.md")
    assert card.data.base_model == "org/base.tag" and "class-unlearning" in card.data.tags
    assert "| 1 | b |" in card.text
    print("installed package OK")
    """
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from this checkout's sources (copied, so that no earlier build folder leaks into it),
    installed (without dependencies: they are this environment's) into a fresh folder."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT / "hf_pbu", source / "hf_pbu", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(work / "dist"),
         str(source)],
        check=True, capture_output=True, cwd=work,
    )
    (wheel,) = (work / "dist").glob("hf_pbu-*.whl")
    site = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, cwd=work)
    return site


def _run_installed(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_wheel_ships_the_card_template_and_the_evaluate_module(installed, tmp_path):
    files = {path.relative_to(installed).as_posix() for path in installed.rglob("*") if path.is_file()}
    assert "hf_pbu/model_cards/unlearned_model.md" in files
    assert "hf_pbu/metrics/unlearning_accuracy/unlearning_accuracy.py" in files
    assert not any(name.startswith(("benchmarks/", "tests/")) for name in files)

    done = _run_installed(installed, tmp_path, "-c", INSTALLED_CHECK, str(installed), str(ROOT))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "installed package OK" in done.stdout


def test_the_console_command_and_the_script_share_their_arguments(installed, tmp_path):
    """`hf-pbu unlearn --help` (the installed entry point) and `scripts/unlearn.py --help` list the same flags."""
    entry = (installed / "bin" / "hf-pbu").read_text()
    assert "hf_pbu.cli" in entry
    command = _run_installed(installed, tmp_path, "-c", "from hf_pbu.cli import main; main()", "unlearn", "--help")
    script = subprocess.run([sys.executable, str(ROOT / "scripts" / "unlearn.py"), "--help"], capture_output=True,
                            text=True, timeout=300, cwd=ROOT)
    assert command.returncode == 0 and script.returncode == 0, command.stderr[-2000:] + script.stderr[-2000:]
    for flag in ("--model_id", "--forget_class", "--forget_loss", "--push_to_hub", "--alpha"):
        assert flag in command.stdout and flag in script.stdout
    listing = _run_installed(installed, tmp_path, "-c", "from hf_pbu.cli import main; main()", "--help")
    assert "unlearn" in listing.stdout
    wrong = _run_installed(installed, tmp_path, "-c", "from hf_pbu.cli import main; main()", "forget")
    assert wrong.returncode != 0 and "unknown command 'forget'" in wrong.stderr
