"""One source for each fact (issue 23): the checkpoint signature's settings are derived from the config's fields, so a
new field cannot be left out of them; the texts that state a default state the one the code uses; the command line
accepts every forget term the library builds; and no module reaches into another's private names."""

import ast
import io
import math
import re
from contextlib import redirect_stdout
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import pytest
from test_cli_faults import argv, error_of, interrupted_after_one_step
from test_unlearn_script import offline  # noqa: F401  (fixture)

from hf_pbu.cli.unlearn import parse
from hf_pbu.config import RUN_ONLY_FIELDS, PBUConfig

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("offline")  # the tiny Hub model from an HF cache, HF_HUB_OFFLINE=1

# The fields that shape the objective and its optimisation: each must be in the signature a resume is checked against.
OBJECTIVE_FIELDS = (
    "alpha", "beta", "gamma", "forget_loss", "npo_tau", "distill_weight", "forget_level", "forget_row_learning_rate",
    "fisher_estimator", "fisher_max_samples", "fisher_exact_max_classes", "fisher_mc_samples", "fisher_top_mass",
    "stop_rule", "stop_forget_accuracy", "stop_trigger_accuracy", "stop_plateau_tolerance", "stop_plateau_patience",
    "freeze_batchnorm", "learning_rate", "optim", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon",
    "max_grad_norm", "per_device_train_batch_size", "gradient_accumulation_steps", "seed", "lr_scheduler_type",
    "warmup_steps", "dataloader_drop_last",
)


def test_every_objective_field_is_in_the_run_settings(tmp_path):
    settings = PBUConfig(output_dir=str(tmp_path)).run_settings()
    assert [name for name in OBJECTIVE_FIELDS if name not in settings] == []
    names = {f.name for f in fields(PBUConfig) if f.init}
    assert set(settings) == {name for name in names if not name.startswith(RUN_ONLY_FIELDS)} - {
        "max_steps", "num_train_epochs", "min_step_budget"}  # the budget only bounds a constant-rate run


def test_the_step_budget_is_a_setting_when_the_schedule_depends_on_it(tmp_path):
    settings = PBUConfig(output_dir=str(tmp_path), lr_scheduler_type="linear").run_settings()
    assert {"max_steps", "num_train_epochs", "min_step_budget"} <= set(settings)


def test_a_new_field_is_a_setting_unless_named_run_only(tmp_path):
    @dataclass
    class ExtendedConfig(PBUConfig):
        new_objective_weight: float = field(default=0.5, metadata={"help": "A new term's weight."})

    assert ExtendedConfig(output_dir=str(tmp_path)).run_settings()["new_objective_weight"] == 0.5


def test_a_resume_under_another_fisher_sample_size_is_refused(tiny_imagefolder, tmp_path):
    out = tmp_path / "out"
    interrupted_after_one_step(tiny_imagefolder, out)
    message = error_of(argv(tiny_imagefolder, out, "--max_steps", "1", "--fisher_max_samples", "5",
                            "--resume_from_checkpoint", str(out / "checkpoint-1")))
    assert f"Cannot resume {out / 'checkpoint-1'}" in message
    assert "settings.fisher_max_samples: 1024 in the checkpoint, 5 now" in message


def help_entries() -> dict[str, str]:
    """`--help` as a user reads it, one entry per flag: {flag name: its help text, on one line}."""
    with redirect_stdout(io.StringIO()) as printed, pytest.raises(SystemExit):
        parse(["--help"])
    entries = re.split(r"\n  (?=-)", printed.getvalue())
    return {found.group(1): re.sub(r"\s+", " ", entry) for entry in entries
            if (found := re.match(r"--([a-z_]+)\b", entry))}


def test_help_states_each_config_default_the_run_uses():
    entries = help_entries()
    own = [f for f in fields(PBUConfig) if f.name in PBUConfig.__annotations__]  # the defaults PBUConfig sets
    assert len(own) > 30
    for f in own:
        default = f.default_factory() if f.default is MISSING else f.default
        stated = re.search(r"\(default: (.*)\)$", entries[f.name].strip())
        assert stated, f"--{f.name} states no default"
        assert stated.group(1) == str(default), f.name


def stated_number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, pattern
    return float(found.group(1))


def test_the_docstring_and_readme_state_the_defaults(tmp_path):
    config = PBUConfig(output_dir=str(tmp_path))
    doc = re.sub(r"\s+", " ", PBUConfig.__doc__)
    assert stated_number(r"alpha (\d+)", doc) == config.alpha
    assert stated_number(r"beta (\d+)", doc) == config.beta
    assert stated_number(r"gamma (\d+)", doc) == config.gamma
    assert stated_number(r"learning rate is ([\d.e-]+)", doc) == config.learning_rate
    assert f"`{config.forget_loss}` by default" in doc and f"`forget_level='{config.forget_level}'`" in doc
    readme = re.sub(r"\s+", " ", (ROOT / "README.md").read_text())
    stated = re.findall(r"`--([a-z_]+)` \(([\d.]+)%?\)", readme)
    assert len(stated) >= 3
    for name, value in stated:
        assert math.isclose(float(value), float(getattr(config, name))), name


def test_the_command_line_takes_a_join_of_forget_terms(tmp_path):
    given = ["--model_id", "org/model", "--forget_class", "1", "--output_dir", str(tmp_path), "--forget_loss"]
    *_, config = parse([*given, "npo+complement"])
    assert config.forget_loss == "npo+complement" and config.build_forget_loss().bounded
    with pytest.raises(ValueError, match="nothing"):
        parse([*given, "npo+nothing"])


def test_no_module_imports_another_modules_private_name():
    """`from .x import _name`, or `module._name` on a module of this package, reaches past another module's door."""
    offending = []
    for path in sorted((ROOT / "hf_pbu").rglob("*.py")):
        tree, ours = ast.parse(path.read_text(), str(path)), set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("hf_pbu")):
                ours |= {alias.asname or alias.name for alias in node.names}
                offending += [f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}"
                              for alias in node.names if alias.name.startswith("_") and alias.name != "__version__"]
            elif isinstance(node, ast.Import):
                ours |= {alias.asname or alias.name.split(".")[0] for alias in node.names
                         if alias.name.startswith("hf_pbu")}
        offending += [f"{path.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr}" for node in ast.walk(tree)
                      if isinstance(node, ast.Attribute) and node.attr.startswith("_")
                      and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
                      and node.value.id in ours]
    assert offending == []
