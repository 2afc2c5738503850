"""The lm-eval model "nemo_llm": registered by `import nemo_llm`, runs local lm-eval tasks through the
command line, and scores and generates as transformers does on imported Hugging Face models."""

import glob
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from nemo_llm.convert import import_hf
from nemo_llm.evaluation.lm_eval_adapter import NemoLLMLM
from nemo_llm.evaluation.loglikelihood import encode_pair, rolling_windows
from nemo_llm.inference import SamplingParams
from tests.conftest import REPO
from tests.convert.conftest import VOCAB, gpt2_model, llama_model

# Relative, as the tasks' data_files are: lm-eval resolves them from the working directory, the repository root.
TASKS_DIR = Path("tests/data/lm_eval_tasks")
TASKS = ["nemo_llm_test_choice", "nemo_llm_test_rolling", "nemo_llm_test_generate"]
CONTEXT = 64  # max_position_embeddings of the test models
TOLERANCE = 1e-4

# (context, continuation); the last context is cut to fit the window
PAIRS = [("The cat sat on the", " mat"), ("", "A dog barks"), ("Question: what do we drink?\nAnswer: ", "water"),
         ("the sea is blue and the sky is grey; " * 8, " and the sky is blue too")]
DOCUMENTS = ["The cat sat on the mat.", "W",
             "A dog barks at the moon while the bird sings in the tree, and we drink water. " * 3]  # > 64 tokens
PROMPTS = ["The cat", "Q: What colour is the sky?\nA:", ""]


def lines(name: str) -> list[dict]:
    return [json.loads(line) for line in (REPO / TASKS_DIR / name).read_text().splitlines()]


def train_tokenizer() -> Tokenizer:
    """Byte-level BPE with exactly VOCAB ids, so that no logit lies outside the tokenizer (generation never
    picks those, transformers would). Ids 0, 1, 2 are GPT-2's and Llama's end-of-text tokens."""
    texts = [next(iter(doc.values())) for name in ("choice.jsonl", "rolling.jsonl", "generate.jsonl")
             for doc in lines(name)] + DOCUMENTS
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts * 4, trainer)
    assert bpe.get_vocab_size() == VOCAB
    return bpe


def save_hf(model: torch.nn.Module, path: Path) -> Path:
    model.save_pretrained(path)
    train_tokenizer().save(str(path / "tokenizer.json"))
    return path


@pytest.fixture(scope="module")
def hf_gpt2_dir(tmp_path_factory) -> Path:
    return save_hf(gpt2_model(), tmp_path_factory.mktemp("hf_gpt2"))


@pytest.fixture(scope="module", params=["gpt2", "llama-gqa"])
def hf_and_ours(request, tmp_path_factory) -> tuple[torch.nn.Module, NemoLLMLM]:
    """A random transformers model and the adapter over its saved folder."""
    hf = gpt2_model() if request.param == "gpt2" else llama_model(tied=False, kv_heads=2)
    path = save_hf(hf, tmp_path_factory.mktemp(f"hf_{request.param}"))
    return hf, NemoLLMLM(path=str(path), batch_size=3, device="cpu")


def instances(kind: str, arguments: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, args, i) for i, args in enumerate(arguments)]


@torch.no_grad()
def hf_token_logprobs(model: torch.nn.Module, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' log p(ids[i] | ids[:i]) for i >= 1, and whether each token is the argmax."""
    logits = model(torch.tensor([ids[:-1]])).logits[0].double()
    targets = torch.tensor(ids[1:])
    return logits.log_softmax(-1).gather(-1, targets[:, None])[:, 0], logits.argmax(-1) == targets


# --- registration ------------------------------------------------------------------------------------


def test_import_registers_the_model_lazily_and_keeps_lm_eval_models():
    from lm_eval.api.registry import get_model

    assert get_model("nemo_llm") is NemoLLMLM
    assert get_model("hf").__name__ == "HFLM"  # lm-eval's own models are still found
    probe = ("import importlib, sys, nemo_llm\n"
             "from lm_eval.api.registry import model_registry\n"
             "importlib.reload(nemo_llm)\n"  # registering again must not fail
             "print('nemo_llm' in model_registry, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


def test_import_works_without_lm_eval():
    probe = "import sys\nsys.modules['lm_eval'] = None  # as if not installed\nimport nemo_llm\nprint('ok')\n"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


# --- lm-eval's command line on local tasks ---------------------------------------------------------


def run_cli(checkpoint: Path, output: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(output / "datasets_cache"), "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "nemo_llm.evaluation.lm_eval_cli", "--model", "nemo_llm",
               "--model_args", f"path={checkpoint},batch_size=4", "--device", "cpu", "--tasks", ",".join(TASKS),
               "--include_path", str(TASKS_DIR), "--output_path", str(output), "--log_samples"]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)


def samples(output: Path, task: str) -> list[dict]:
    (path,) = glob.glob(str(output / "**" / f"samples_{task}_*.jsonl"), recursive=True)
    return sorted((json.loads(line) for line in Path(path).read_text().splitlines()), key=lambda s: s["doc_id"])


def arguments(sample: dict) -> list[tuple]:
    return [tuple(args.values()) for args in sample["arguments"].values()]


def test_cli_runs_local_tasks_and_reports_what_the_adapter_computes(tmp_path, hf_gpt2_dir):
    checkpoint = import_hf(hf_gpt2_dir, tmp_path / "nemo")
    output = tmp_path / "out"
    run = run_cli(checkpoint, output)
    assert run.returncode == 0, run.stderr[-3000:]
    (results_file,) = glob.glob(str(output / "**" / "results_*.json"), recursive=True)
    report = json.loads(Path(results_file).read_text())
    results = report["results"]
    assert report["config"]["model"] == "nemo_llm" and report["config"]["max_length"] == CONTEXT
    lm = NemoLLMLM(path=str(checkpoint), batch_size=4, device="cpu")

    # multiple choice: the most likely answer is the model's choice
    choice = samples(output, "nemo_llm_test_choice")
    assert [s["doc"] for s in choice] == lines("choice.jsonl")
    correct, correct_norm = [], []
    for sample in choice:
        requests = arguments(sample)
        ours = [logprob for logprob, _ in lm.loglikelihood(instances("loglikelihood", requests))]
        logged = [float(resp[0][0]) for resp in sample["resps"]]
        assert logged == pytest.approx(ours, abs=1e-5)
        per_char = [logprob / len(continuation) for logprob, (_, continuation) in zip(ours, requests)]
        correct.append(ours.index(max(ours)) == sample["doc"]["label"])
        correct_norm.append(per_char.index(max(per_char)) == sample["doc"]["label"])
    assert results["nemo_llm_test_choice"]["acc,none"] == pytest.approx(sum(correct) / len(correct))
    assert results["nemo_llm_test_choice"]["acc_norm,none"] == pytest.approx(sum(correct_norm) / len(correct_norm))

    # whole-document log-likelihoods, one longer than the context
    texts = [doc["text"] for doc in lines("rolling.jsonl")]
    ours = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(text,) for text in texts]))
    logged = [float(s["resps"][0][0]) for s in samples(output, "nemo_llm_test_rolling")]
    assert logged == pytest.approx(ours, abs=1e-5)
    total, num_bytes = sum(ours), sum(len(text.encode()) for text in texts)
    words = sum(len(re.split(r"\s+", text)) for text in texts)
    rolling = results["nemo_llm_test_rolling"]
    assert rolling["bits_per_byte,none"] == pytest.approx(-total / num_bytes / math.log(2))
    assert rolling["byte_perplexity,none"] == pytest.approx(math.exp(-total / num_bytes))
    assert rolling["word_perplexity,none"] == pytest.approx(math.exp(-total / words))

    # greedy generation until a newline
    generate = samples(output, "nemo_llm_test_generate")
    ours = lm.generate_until(instances("generate_until", [arguments(s)[0] for s in generate]))
    assert [s["resps"][0][0] for s in generate] == ours and all("\n" not in text for text in ours)
    matches = [text == s["target"] for text, s in zip(ours, generate)]
    assert results["nemo_llm_test_generate"]["exact_match,none"] == pytest.approx(sum(matches) / len(matches))


# --- parity with transformers ------------------------------------------------------------------------


def test_loglikelihood_equals_transformers(hf_and_ours):
    hf, lm = hf_and_ours
    ours = lm.loglikelihood(instances("loglikelihood", PAIRS))
    for (context, continuation), (logprob, is_greedy) in zip(PAIRS, ours):
        context_ids, continuation_ids = encode_pair(lm.tokenizer, context, continuation)
        ids = ((context_ids or [lm.eot_token_id]) + continuation_ids)[-(CONTEXT + 1):]
        theirs, argmax = hf_token_logprobs(hf, ids)
        n = len(continuation_ids)
        assert logprob == pytest.approx(theirs[-n:].sum().item(), abs=TOLERANCE)
        assert is_greedy == bool(argmax[-n:].all())
    assert len(encode_pair(lm.tokenizer, *PAIRS[-1])[0]) > CONTEXT  # the window cut is exercised


def test_rolling_loglikelihood_equals_transformers(hf_and_ours):
    hf, lm = hf_and_ours
    ours = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(doc,) for doc in DOCUMENTS]))
    for doc, total in zip(DOCUMENTS, ours):
        tokens = [lm.eot_token_id, *lm.tokenizer.encode(doc)]
        theirs = 0.0
        for start, end, first in rolling_windows(len(tokens) - 1, CONTEXT, CONTEXT):
            theirs += hf_token_logprobs(hf, tokens[start:end + 1])[0][first - start - 1:].sum().item()
        assert total == pytest.approx(theirs, abs=TOLERANCE)
    assert len(lm.tokenizer.encode(DOCUMENTS[-1])) > CONTEXT  # several windows are exercised


@torch.no_grad()
def hf_greedy(hf: torch.nn.Module, prompt_ids: list[int], max_new_tokens: int, eod: int) -> list[int]:
    ids = torch.tensor([prompt_ids])
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                      eos_token_id=eod, pad_token_id=eod)
    return out[0, len(prompt_ids):].tolist()


def test_greedy_generation_equals_transformers(hf_and_ours):
    hf, lm = hf_and_ours
    eod, new_tokens = lm.eot_token_id, 12
    texts = lm.generate_until(instances("generate_until", [(p, {"until": [], "max_gen_toks": new_tokens})
                                                           for p in PROMPTS]))
    for prompt, text in zip(PROMPTS, texts):
        prompt_ids = lm.tokenizer.encode(prompt) or [eod]
        theirs = hf_greedy(hf, prompt_ids, new_tokens, eod)
        # token for token, with the KV cache
        assert lm.engine.generate_ids([prompt_ids], SamplingParams(max_new_tokens=new_tokens, greedy=True)) == [theirs]
        assert text == lm.tokenizer.decode([t for t in theirs if t != eod])

    # a stop string ends the text before it; so does a stop the model produces later
    stop = texts[0][2:4]
    request = (PROMPTS[0], {"until": [stop], "max_gen_toks": new_tokens})
    (cut,) = lm.generate_until(instances("generate_until", [request]))
    assert stop and cut == texts[0][:texts[0].index(stop)]


def test_generation_keeps_the_end_of_a_context_too_long_for_the_window(hf_and_ours):
    hf, lm = hf_and_ours
    context = "A dog barks at the moon while the bird sings in the tree. " * 4
    (text,) = lm.generate_until(instances("generate_until", [(context, {"until": [], "max_gen_toks": 60})]))
    kept = lm.tokenizer.encode(context)[-(CONTEXT - 60):]
    theirs = hf_greedy(hf, kept, 60, lm.eot_token_id)
    assert text == lm.tokenizer.decode([t for t in theirs if t != lm.eot_token_id])


# --- model_args and gen_kwargs -----------------------------------------------------------------------


def test_model_args_win_over_lm_eval_defaults_and_max_length_narrows_the_window(hf_gpt2_dir):
    lm = NemoLLMLM.create_from_arg_string(f"path={hf_gpt2_dir},batch_size=5,max_length=16",
                                          {"batch_size": "1", "device": "cpu", "max_batch_size": None})
    assert lm.batch_size == 5 and lm.max_length == 16 and lm.get_model_info()["max_length"] == 16
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_gpt2_dir).eval()
    context, continuation = PAIRS[-1]
    ((logprob, _),) = lm.loglikelihood(instances("loglikelihood", [(context, continuation)]))
    context_ids, continuation_ids = encode_pair(lm.tokenizer, context, continuation)
    theirs, _ = hf_token_logprobs(hf, (context_ids + continuation_ids)[-17:])
    assert logprob == pytest.approx(theirs[-len(continuation_ids):].sum().item(), abs=TOLERANCE)

    with pytest.raises(ValueError, match="max_length=65 must be between 1 and the model's context of 64"):
        NemoLLMLM(path=str(hf_gpt2_dir), device="cpu", max_length=65)
    with pytest.raises(ValueError, match="batch_size='auto' must be a positive number"):
        NemoLLMLM.create_from_arg_string(f"path={hf_gpt2_dir}", {"batch_size": "auto", "device": "cpu"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on a machine without CUDA")
def test_lm_eval_default_cuda_device_falls_back_without_cuda(hf_gpt2_dir):
    lm = NemoLLMLM.create_from_arg_string(f"path={hf_gpt2_dir}", {"batch_size": 2, "device": "cuda:0"})
    assert lm.device.type == "cpu" and lm.batch_size == 2
    with pytest.raises(ValueError, match="device=cuda: CUDA is not available here; use device=cpu"):
        NemoLLMLM.create_from_arg_string(f"path={hf_gpt2_dir},device=cuda")


def test_gen_kwargs_map_onto_sampling_params(hf_gpt2_dir):
    lm = NemoLLMLM(path=str(hf_gpt2_dir), device="cpu", max_gen_toks=20, top_p=0.9, seed=3)
    default = lm.sampling_params({})
    assert default.greedy and default.max_new_tokens == 20 and default.stop == [] and default.stop_on_eod
    sampled = lm.sampling_params({"do_sample": True, "temperature": 0.7, "top_k": 5, "until": "\n\n",
                                  "max_gen_toks": 4})
    assert (sampled.greedy, sampled.temperature, sampled.top_k, sampled.top_p, sampled.stop, sampled.max_new_tokens,
            sampled.seed) == (False, 0.7, 5, 0.9, ["\n\n"], 4, 3)
    assert lm.sampling_params({"do_sample": True, "temperature": 0.0}).greedy  # temperature 0 means greedy
    assert lm.sampling_params({"temperature": 0.7}).greedy  # sampling only when asked for
    with pytest.raises(ValueError, match="max_gen_toks=64 leaves no room for a prompt"):
        lm.generate_until(instances("generate_until", [("The cat", {"max_gen_toks": 64})]))


# --- under torchrun ----------------------------------------------------------------------------------


def scores_and_generations(path: str, tensor_parallel: int = 1) -> dict:
    """What the adapter returns in this process (one of the workers under launch_local)."""
    lm = NemoLLMLM(path=path, batch_size=2, device="cpu", tensor_model_parallel_size=tensor_parallel)
    return {"loglikelihood": lm.loglikelihood(instances("loglikelihood", PAIRS)),
            "rolling": lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(d,) for d in DOCUMENTS])),
            "generate": lm.generate_until(instances("generate_until", [(p, {"max_gen_toks": 6}) for p in PROMPTS])),
            "rank_seen_by_lm_eval": (lm.rank, lm.world_size)}


@pytest.mark.slow
def test_tensor_parallel_processes_give_what_one_process_gives(hf_gpt2_dir):
    from nemo_llm.launcher import launch_local

    reference = scores_and_generations(str(hf_gpt2_dir))
    for rank, result in launch_local(scores_and_generations, (str(hf_gpt2_dir), 2), 2).items():
        assert result["generate"] == reference["generate"], f"rank {rank}"
        assert [lp for lp, _ in result["loglikelihood"]] == pytest.approx(
            [lp for lp, _ in reference["loglikelihood"]], abs=1e-5)
        assert [g for _, g in result["loglikelihood"]] == [g for _, g in reference["loglikelihood"]]
        assert result["rolling"] == pytest.approx(reference["rolling"], abs=1e-5)
        assert result["rank_seen_by_lm_eval"] == (0, 1)  # every process runs every request (SPMD)
