"""The prompt_learning stage after pretraining in one `python main.py stages=[...]` chain."""

import json

import pytest

from tests.conftest import run_main
from tests.prompt_learning.synthetic import records, write_jsonl


@pytest.mark.slow
def test_stage_runs_after_pretraining(small_overrides, tmp_path):
    rows = [{**r, "taskname": "sentiment"} for r in records(64, 1)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    val = write_jsonl(tmp_path / "val.jsonl", records(16, 2, "sentiment"))
    result = run_main([*small_overrides, "stages=[data_preparation,training,prompt_learning]",
                       "model.tokenizer.library=byte", "trainer.max_steps=4", "trainer.val_check_interval=4", "model.optim.sched.warmup_steps=1",
                       "training.progress_bar=false", "prompt_learning=classification",
                       f"prompt_learning.data.train_ds={train}", f"prompt_learning.data.validation_ds={val}",
                       "prompt_learning.max_steps=3", "prompt_learning.micro_batch_size=4",
                       "prompt_learning.global_batch_size=8", "prompt_learning.max_seq_length=32"])
    assert result.returncode == 0, result.stderr[-3000:]
    out_dir = tmp_path / "run" / "prompt_learning"
    summary = json.loads((out_dir / "results.json").read_text())
    assert summary["steps"] == 3 and summary["tasks"] == ["sentiment"]
    assert summary["validation"]["sentiment"]["examples"] == 16
    assert (out_dir / "prompts.pt").is_file() and (out_dir / "prompt_table.pt").is_file()
    assert len((out_dir / "metrics.jsonl").read_text().splitlines()) == 3
    assert "task sentiment accuracy" in result.stdout


def test_config_errors_name_the_key(small_overrides):
    from nemo_llm.config import ConfigError, compose, validate

    cfg = compose([*small_overrides, "stages=[prompt_learning]", "prompt_learning=classification",
                   "prompt_learning.virtual_prompt_style=lora"])
    with pytest.raises(ConfigError, match="prompt_learning.virtual_prompt_style"):
        validate(cfg)
    cfg = compose([*small_overrides, "stages=[prompt_learning]", "prompt_learning.new_tasks=[]"])
    with pytest.raises(ConfigError, match="prompt_learning.new_tasks is empty"):
        validate(cfg)
    validate(compose([*small_overrides, "prompt_learning=squad", "stages=[prompt_learning]"]))
