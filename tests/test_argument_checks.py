"""Bad values are refused before any work, on the command line and in a YAML file alike, with one message naming the
flag; YAML values are read as their flags' types (a scalar where a list is expected is a one-element list)."""

import pytest
from test_unlearn_script import _script

import hf_pbu.cli.unlearn

BAD_VALUES = [
    ("learning_rate", "0", "--learning_rate must be a finite number > 0; got 0.0"),
    ("learning_rate", "-1e-4", "--learning_rate must be a finite number > 0; got -0.0001"),
    ("learning_rate", "nan", "--learning_rate must be a finite number > 0; got nan"),
    ("num_train_epochs", "0", "--num_train_epochs must be > 0 when --max_steps is not set"),
    ("max_steps", "0", "--max_steps must be a number of optimizer steps >= 1, or -1 for the default budget"),
    ("max_steps", "-5", "--max_steps must be a number of optimizer steps >= 1, or -1 for the default budget"),
    ("num_train_epochs", "nan", "--num_train_epochs must be a finite number >= 0; got nan"),
    ("alpha", "nan", "--alpha must be a finite number > 0; got nan"),
    ("alpha", "inf", "--alpha must be a finite number > 0; got inf"),
    ("alpha", "0", "--alpha must be a finite number > 0; got 0.0"),
    ("beta", "-1", "--beta must be a finite number >= 0; got -1.0"),
    ("gamma", "nan", "--gamma must be a finite number >= 0; got nan"),
    ("per_device_train_batch_size", "0", "--per_device_train_batch_size must be an integer >= 1; got 0"),
    ("fisher_batch_size", "0", "--fisher_batch_size must be an integer >= 1; got 0"),
    ("gradient_accumulation_steps", "0", "--gradient_accumulation_steps must be an integer >= 1; got 0"),
    ("fisher_top_mass", "1.5", "--fisher_top_mass must be a finite number > 0 and <= 1, or None; got 1.5"),
    ("stop_trigger_accuracy", "101", "--stop_trigger_accuracy must be a finite number >= 0 and <= 100; got 101.0"),
    ("max_grad_norm", "inf", "--max_grad_norm must be a finite number >= 0; got inf"),
    ("adam_beta2", "1", "--adam_beta2 must be a finite number >= 0 and < 1; got 1.0"),
    ("mia_samples", "-1", "--mia_samples must be an integer >= 0; got -1"),
    ("eval_holdout_fraction", "nan", "--eval_holdout_fraction must be a finite number >= 0 and < 1; got nan"),
]


@pytest.fixture
def nothing_loaded(monkeypatch):
    monkeypatch.setattr(hf_pbu.cli.unlearn, "load_classifier", lambda *a, **k: pytest.fail("the model was loaded"))


def refused(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        _script().main(argv)
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


@pytest.mark.parametrize(("flag", "value", "expected"), BAD_VALUES, ids=[f"{f}={v}" for f, v, _ in BAD_VALUES])
def test_a_bad_value_on_the_command_line_is_refused_before_any_work(tmp_path, nothing_loaded, flag, value, expected):
    out = tmp_path / "out"
    message = refused(["--model_id", "org/tiny-timm", "--forget_class", "1", "--output_dir", str(out),
                       f"--{flag}={value}"])
    assert expected in message
    assert not out.exists()


@pytest.mark.parametrize(("flag", "value", "expected"), BAD_VALUES, ids=[f"{f}={v}" for f, v, _ in BAD_VALUES])
def test_a_bad_value_in_yaml_is_refused_before_any_work_naming_the_file(tmp_path, nothing_loaded, flag, value,
                                                                          expected):
    out = tmp_path / "out"
    config = tmp_path / "run.yaml"
    # Written as people write YAML: `nan`, `-1e-4` and `inf` are strings to a YAML parser, `0` an integer.
    config.write_text(f"model_id: org/tiny-timm\nforget_class: 1\noutput_dir: {out}\n{flag}: {value}\n")
    message = refused([str(config)])
    assert message.startswith(f"error: {config}: ") and expected in message
    assert not out.exists()


def test_yaml_values_are_read_as_their_flags_types(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "model_id: org/tiny-timm\n"
        "forget_class: cat          # one class, not ['c', 'a', 't']\n"
        "output_dir: out\n"
        "learning_rate: 1e-4        # a string to YAML\n"
        "save_strategy: no          # a boolean to YAML\n"
        "label_names: labels        # a list field\n"
        "max_steps: 10.0\n"
        "use_cpu: 'true'\n"
        "mia_samples: '200'\n"
        "revision: 2024\n"
    )
    model_args, data_args, pbu = hf_pbu.cli.unlearn.parse([str(config)])
    assert data_args.forget_class == ["cat"]
    assert pbu.learning_rate == 1e-4 and pbu.save_strategy == "no" and pbu.label_names == ["labels"]
    assert pbu.max_steps == 10 and isinstance(pbu.max_steps, int) and pbu.use_cpu is True
    assert data_args.mia_samples == 200 and model_args.revision == "2024"

    config.write_text("model_id: org/tiny-timm\nforget_class: [3, cat]\noutput_dir: out\n")
    assert hf_pbu.cli.unlearn.parse([str(config)])[1].forget_class == ["3", "cat"]


@pytest.mark.parametrize(("text", "expected"), [
    ("per_device_train_batch_size: eight", "per_device_train_batch_size: expected an integer, got 'eight' (str)"),
    ("max_steps: 2.5", "max_steps: expected an integer, got 2.5 (float)"),
    ("evidence: maybe", "evidence: expected true or false, got 'maybe' (str)"),
    ("eval_split: no", "eval_split: expected a string or null, got False (bool). YAML reads yes/no/on/off as booleans"),
    ("no_such_flag: 1", "Some keys are not used by the HfArgumentParser: ['no_such_flag']"),
    ("forget_class: [1\n", "is not valid YAML"),
    ("- a list", "must hold a mapping of argument names to values"),
], ids=["int", "fraction-for-int", "bool", "yaml-boolean-for-string", "unknown-key", "syntax", "not-a-mapping"])
def test_a_yaml_value_with_no_reading_is_one_message_naming_file_and_key(tmp_path, nothing_loaded, text, expected):
    config = tmp_path / "run.yaml"
    config.write_text(text if text.startswith(("- ", "forget_class")) else
                      f"model_id: org/tiny-timm\nforget_class: 1\noutput_dir: {tmp_path / 'out'}\n{text}\n")
    message = refused([str(config)])
    assert str(config) in message and expected in message
