"""The conversion stage through main.py, and its config rules."""

import json

import pytest

from nemo_llm.config import ConfigError, compose, validate
from nemo_llm.pipeline import run_pipeline
from tests.conftest import run_main
from tests.convert.conftest import assert_logits_match, hf_logits, tokens


def test_hf_to_nemo_then_nemo_to_hf_through_main(tmp_path, gpt2_dir):
    run_dir = tmp_path / "run"
    imported = run_main(["stages=[conversion]", "conversion.direction=hf_to_nemo", f"conversion.input={gpt2_dir}",
                         f"run_dir={run_dir}"])
    assert imported.returncode == 0, imported.stderr
    checkpoint = run_dir / "nemo" / "model.ckpt"
    assert f"evaluation.checkpoint={checkpoint}" in imported.stdout
    assert json.loads((run_dir / "stages.json").read_text())["conversion"]["checkpoint"] == str(checkpoint)

    exported = run_main(["stages=[conversion]", f"conversion.input={run_dir / 'nemo'}",
                         f"conversion.output={tmp_path / 'hf'}", f"run_dir={run_dir}"])
    assert exported.returncode == 0, exported.stderr
    ids = tokens()
    assert_logits_match(hf_logits(tmp_path / "hf", ids), hf_logits(gpt2_dir, ids))


def test_refused_import_exits_2_with_one_line(tmp_path, gpt2_dir, capsys):
    config = json.loads((gpt2_dir / "config.json").read_text())
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "architectures": ["BertForMaskedLM"]}))
    cfg = compose(["stages=[conversion]", "conversion.direction=hf_to_nemo", f"conversion.input={tmp_path / 'hf'}",
                   f"run_dir={tmp_path / 'run'}"])
    assert run_pipeline(cfg) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        ("error: stage conversion: config.json: architecture BertForMaskedLM is not supported: nemo_llm converts "
         "GPT2LMHeadModel and LlamaForCausalLM checkpoints")]


@pytest.mark.parametrize("overrides, expected", [
    (["conversion.direction=sideways"],
     "conversion.direction=sideways is not supported: use one of nemo_to_hf, hf_to_nemo"),
    (["stages=[conversion]", "conversion.direction=hf_to_nemo"], "conversion.input is empty"),
    (["stages=[conversion]", "conversion.input=a", "conversion.output=a"], "conversion.output=a is conversion.input"),
])
def test_config_rules(overrides, expected):
    with pytest.raises(ConfigError) as info:
        validate(compose(overrides))
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_conversion_is_not_a_default_stage_and_defaults_validate():
    cfg = compose([])
    assert "conversion" not in cfg.stages and cfg.conversion.direction == "nemo_to_hf"
    validate(cfg)


def test_stage_check_refuses_a_missing_input(tmp_path):
    from nemo_llm.stages import STAGES

    cfg = compose(["stages=[conversion]", "conversion.direction=hf_to_nemo", f"conversion.input={tmp_path}"])
    with pytest.raises(ConfigError, match="has no config.json"):
        STAGES["conversion"].check(cfg)
    cfg = compose(["stages=[conversion]", f"conversion.input={tmp_path / 'none.ckpt'}"])
    with pytest.raises(ConfigError, match="no such file or directory"):
        STAGES["conversion"].check(cfg)
