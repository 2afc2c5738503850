"""nemo_llm.load from every kind of path: Hugging Face folder, import output, .ckpt, DCP directory,
run directory."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

import nemo_llm
from nemo_llm.convert import ConversionError, import_hf
from nemo_llm.models.gpt import GPTModel
from nemo_llm.tokenizers import ByteTokenizer
from tests.convert.conftest import VOCAB, assert_logits_match, hf_logits, tokens, write_training_checkpoint
from tests.convert.test_hf import trained_here


def test_import_nemo_llm_stays_light():
    code = "import sys, nemo_llm; assert callable(nemo_llm.load); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_hf_folder_without_tokenizer_warns_and_loads(gpt2_dir):
    with pytest.warns(UserWarning, match="no tokenizer files"):
        model, tokenizer = nemo_llm.load(gpt2_dir)
    assert tokenizer is None and not model.training
    ids = tokens()
    with torch.no_grad():
        logits = model(ids)
    assert logits.shape == (2, 24, VOCAB)
    assert_logits_match(logits, hf_logits(gpt2_dir, ids))


def test_import_output_folder_and_its_checkpoint_load_alike(tmp_path, gpt2_dir):
    with pytest.warns(UserWarning):
        checkpoint = import_hf(gpt2_dir, tmp_path)
    ids = tokens()
    with pytest.warns(UserWarning, match="no tokenizer files"):
        from_folder, _ = nemo_llm.load(tmp_path)
    with pytest.warns(UserWarning, match="no tokenizer files"):
        from_file, _ = nemo_llm.load(checkpoint)
    with torch.no_grad():
        torch.testing.assert_close(from_folder(ids), from_file(ids), rtol=0, atol=0)


def run_dir_with_checkpoint(tmp_path: Path, recorded_run_dir: str = "results/elsewhere") -> tuple[Path, GPTModel]:
    """A run directory as main.py leaves it, trained with the byte tokenizer (257 ids padded to 320); its
    config.yaml records run_dir as seen from another working directory."""
    model = trained_here()
    run_dir = tmp_path / "run"
    write_training_checkpoint(run_dir / "checkpoints" / "last.ckpt", model)
    (run_dir / "config.yaml").write_text(f"run_dir: {recorded_run_dir}\nmodel:\n  tokenizer:\n    library: byte\n")
    return run_dir, model


def test_run_directory_gives_its_tokenizer_and_unpadded_logits(tmp_path):
    run_dir, trained = run_dir_with_checkpoint(tmp_path)
    for path in (run_dir, run_dir / "checkpoints" / "last.ckpt"):
        model, tokenizer = nemo_llm.load(path)
        assert isinstance(tokenizer, ByteTokenizer) and model.config.vocab_size == 257
        ids = tokens(vocab=257)
        with torch.no_grad():
            assert_logits_match(model(ids), trained(ids)[..., :257])
        assert model.output_layer.weight is model.embedding.word_embeddings.weight


def test_run_directory_that_moved_finds_its_tokenizer_file(tmp_path):
    from nemo_llm.tokenizers import train_sentencepiece

    run_dir, _ = run_dir_with_checkpoint(tmp_path, recorded_run_dir="results/old_name")
    train_sentencepiece(["a tiny corpus of words, with words and more words: " + str(i) for i in range(300)],
                        run_dir / "data" / "tokenizer.model", vocab_size=300)
    (run_dir / "config.yaml").write_text("run_dir: results/old_name\nmodel:\n  tokenizer:\n    library: sentencepiece\n"
                                         "    model: results/old_name/data/tokenizer.model\n")
    model, tokenizer = nemo_llm.load(run_dir)
    assert tokenizer.vocab_size == 300 and model.config.vocab_size == 300


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_dcp_checkpoint_directory(tmp_path):
    trained = trained_here()
    path = tmp_path / "step5.ckpt"
    dcp.save({"state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()}}, checkpoint_id=str(path))
    write_training_checkpoint(path / "meta.pt", trained)
    with pytest.warns(UserWarning, match="no tokenizer files"):
        model, _ = nemo_llm.load(path)
    ids = tokens(vocab=257)
    with torch.no_grad():
        assert_logits_match(model(ids), trained(ids))  # vocabulary unknown: padded logits stay


def test_not_a_model(tmp_path):
    with pytest.raises(ConversionError, match="not a model: expected a .ckpt file"):
        nemo_llm.load(tmp_path)
