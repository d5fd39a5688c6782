"""PBUTrainer under `accelerate launch` with 2 processes (gloo on CPU): the step budget does not shrink with the
number of processes, checkpoints are saved within it, and the stop check counts each forget image once."""

import json
import sys

import pytest
from test_distributed import SCRIPTS, accelerate_launch

from hf_pbu.io.checkpoints import SIGNATURE_FILE

sys.path.insert(0, str(SCRIPTS))
from distributed_unlearning import IMAGES, config


@pytest.mark.distributed
def test_two_process_run_keeps_the_one_process_budget_and_stops_on_the_whole_set(tmp_path):
    out = tmp_path / "result.json"
    run = accelerate_launch(SCRIPTS / "distributed_unlearning.py", str(out), str(tmp_path / "run"))
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    budget = config(str(tmp_path)).step_budget(IMAGES)
    assert budget == 16  # 2 epochs of 8 batches of 2; Trainer alone would count 2 epochs of 4 steps on 2 processes
    assert result["world_size"] == 2 and result["budget_steps"] == budget
    assert (tmp_path / "run" / f"checkpoint-{budget}" / SIGNATURE_FILE).exists()
    assert result["whole_set_accuracy"] == pytest.approx(100 / IMAGES)
    assert result["stopped_at_step"] is not None
    assert result["confirmations"][-1] == [result["stopped_at_step"], pytest.approx(100 / IMAGES)]
    assert result["head_stop_rule"] == "ranked_last" and result["head_stopped_at_step"] is not None
    assert result["heads_equal"] and result["head_rows_moved"] > 0  # the same refit rows on both processes
