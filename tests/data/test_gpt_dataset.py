import numpy as np
import pytest

from nemo_llm.data.gpt_dataset import (DatasetTooSmallError, GPTDataset, IndexCacheError, PretrainingBatchSampler,
                                       build_gpt_datasets, split_documents)
from nemo_llm.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter


@pytest.fixture
def indexed(tmp_path):
    rng = np.random.RandomState(0)
    writer = IndexedDatasetWriter(tmp_path / "c")
    for n in rng.randint(0, 40, size=50):  # some empty documents too
        writer.add_document(rng.randint(0, 1000, size=n))
    writer.finalize()
    return IndexedDataset(tmp_path / "c")


def stream(indexed, order):
    return np.concatenate([indexed[int(d)] for d in order]).astype(np.int64)


def test_samples_are_consecutive_windows_of_the_shuffled_document_stream(indexed):
    docs = np.arange(len(indexed))
    ds = GPTDataset(indexed, docs, seq_length=16, num_samples=None, seed=3)
    tokens = stream(indexed, ds.doc_idx)
    assert len(ds) == (int(indexed.sizes.sum()) - 1) // 16
    for idx in range(len(ds)):
        i = int(ds.shuffle_idx[idx])
        sample = ds[idx]
        window = tokens[i * 16:i * 16 + 17]
        assert sample["tokens"].tolist() == window[:-1].tolist()
        assert sample["labels"].tolist() == window[1:].tolist()


def test_more_samples_than_one_epoch_use_several_epochs(indexed):
    docs = np.arange(len(indexed))
    per_epoch = int(indexed.sizes.sum())
    ds = GPTDataset(indexed, docs, seq_length=16, num_samples=3 * per_epoch // 16, seed=1)
    assert len(ds.doc_idx) >= 3 * len(docs)
    assert sorted(ds.doc_idx[:len(docs)].tolist()) == docs.tolist()  # each epoch is a permutation
    ds[len(ds) - 1]  # the last sample is readable


def test_deterministic_from_the_seed(indexed):
    docs = np.arange(len(indexed))
    a = GPTDataset(indexed, docs, 16, 100, seed=7)
    b = GPTDataset(indexed, docs, 16, 100, seed=7)
    c = GPTDataset(indexed, docs, 16, 100, seed=8)
    assert all(np.array_equal(a[i]["tokens"], b[i]["tokens"]) for i in range(100))
    assert not all(np.array_equal(a[i]["tokens"], c[i]["tokens"]) for i in range(10))


def test_too_small_split_is_a_clear_error(indexed):
    with pytest.raises(DatasetTooSmallError, match="fewer than one sample of model.encoder_seq_length"):
        GPTDataset(indexed, np.arange(1), seq_length=4096, num_samples=None, seed=0)


def test_split_documents_follows_megatron():
    splits = split_documents(1000, [0.969, 0.03, 0.001])
    assert [len(splits[k]) for k in ("train", "validation", "test")] == [969, 30, 1]
    assert splits["validation"][0] == 969 and splits["test"][0] == 999
    small = split_documents(10, [0.9, 0.05, 0.05])
    assert sum(len(v) for v in small.values()) == 10


def test_build_gpt_datasets_skips_empty_held_out_splits(indexed):
    datasets = build_gpt_datasets(indexed.prefix, [1.0, 0.0, 0.0], 16, seed=0, train_samples=10)
    assert list(datasets) == ["train"] and len(datasets["train"]) == 10


def test_batch_sampler_resumes_and_ignores_data_parallel_size():
    full = list(PretrainingBatchSampler(total_samples=64, consumed_samples=0, global_batch_size=8))
    assert full[0] == list(range(8)) and len(full) == 8
    resumed = list(PretrainingBatchSampler(64, consumed_samples=24, global_batch_size=8))
    assert resumed == full[3:]
    shares = [list(PretrainingBatchSampler(64, 24, 8, data_parallel_rank=r, data_parallel_size=2)) for r in range(2)]
    for step, batch in enumerate(resumed):
        assert shares[0][step] + shares[1][step] == batch


def test_indices_are_cached_on_disk_and_reused(indexed, tmp_path, monkeypatch):
    docs = np.arange(len(indexed))
    first = GPTDataset(indexed, docs, 16, 100, seed=7, index_dir=tmp_path / "cache")
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 3 and all("_train_indexmap_100ns_16sl_7s_" in f for f in files)

    def must_not_build(*args, **kwargs):
        raise AssertionError("indices rebuilt although cached")

    monkeypatch.setattr("nemo_llm.data.gpt_dataset.build_indices", must_not_build)
    again = GPTDataset(indexed, docs, 16, 100, seed=7, index_dir=tmp_path / "cache")
    assert all(np.array_equal(first[i]["tokens"], again[i]["tokens"]) for i in range(100))


def test_cache_is_not_reused_for_other_documents_or_rewritten_data(indexed, tmp_path):
    cache = tmp_path / "cache"
    GPTDataset(indexed, np.arange(40), 16, 50, seed=0, index_dir=cache)
    GPTDataset(indexed, np.arange(45), 16, 50, seed=0, index_dir=cache)
    assert len(list(cache.iterdir())) == 6
    writer = IndexedDatasetWriter(tmp_path / "c")  # the same prefix, new content
    for n in range(1, 60):
        writer.add_document(np.arange(n) % 1000)
    writer.finalize()
    rewritten = IndexedDataset(tmp_path / "c")
    ds = GPTDataset(rewritten, np.arange(40), 16, 50, seed=0, index_dir=cache)
    assert len(list(cache.iterdir())) == 9
    assert ds[0]["tokens"].tolist() == GPTDataset(rewritten, np.arange(40), 16, 50, seed=0)[0]["tokens"].tolist()


def test_unwritable_cache_directory_names_the_config_key(indexed, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(IndexCacheError, match="model.data.index_mapping_dir"):
        GPTDataset(indexed, np.arange(len(indexed)), 16, 10, seed=0, index_dir=blocker / "cache")


def _build_on_rank(rank: int, world: int, prefix: str, cache: str, log: str, port: int) -> None:
    import torch.distributed as dist

    import nemo_llm.data.gpt_dataset as gd

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    build = gd.build_indices

    def logged(*args, **kwargs):
        with open(log, "a") as f:
            f.write(f"{rank}\n")
        return build(*args, **kwargs)

    gd.build_indices = logged
    ds = gd.GPTDataset(IndexedDataset(prefix), np.arange(50), 16, 200, seed=5, index_dir=cache)
    np.save(f"{log}.{rank}.npy", np.stack([ds[i]["tokens"] for i in range(200)]))
    dist.destroy_process_group()


def test_rank_zero_builds_the_cache_while_the_others_wait(indexed, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = str(tmp_path / "builds")
    mp.spawn(_build_on_rank, args=(2, indexed.prefix, str(tmp_path / "cache"), log, port), nprocs=2)
    assert open(log).read().split() == ["0"]
    assert np.array_equal(np.load(f"{log}.0.npy"), np.load(f"{log}.1.npy"))


def test_resume_at_another_data_parallel_size_reads_the_next_unseen_samples(indexed, tmp_path):
    datasets = build_gpt_datasets(indexed.prefix, [1.0, 0.0, 0.0], 8, seed=3, train_samples=96, index_mapping_dir=tmp_path)
    train = datasets["train"]

    def read(batches):
        return [train[i]["tokens"].tolist() for batch in batches for i in batch]

    uninterrupted = read(PretrainingBatchSampler(96, 0, global_batch_size=16))
    before = read(list(PretrainingBatchSampler(96, 0, 16))[:2])  # 2 steps at DP 1, then a checkpoint
    ranks = [list(PretrainingBatchSampler(96, 32, 16, data_parallel_rank=r, data_parallel_size=4)) for r in range(4)]
    after = [sample for step in range(len(ranks[0])) for r in range(4) for sample in read([ranks[r][step]])]
    assert before + after == uninterrupted


def test_collate_samples_makes_one_int64_tensor_per_key(indexed):
    import torch

    from nemo_llm.data.gpt_dataset import collate_samples

    ds = GPTDataset(indexed, np.arange(len(indexed)), 16, 20, seed=0)
    batch = collate_samples([ds[i] for i in range(4)])
    assert batch["tokens"].shape == batch["labels"].shape == (4, 16) and batch["tokens"].dtype == torch.int64
    assert batch["tokens"][2].tolist() == ds[2]["tokens"].tolist()


def test_indices_are_the_same_in_another_process(indexed, tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    script = ("import numpy as np, sys; from nemo_llm.data.indexed_dataset import IndexedDataset; "
              "from nemo_llm.data.gpt_dataset import build_indices; ix = IndexedDataset(sys.argv[1]); "
              "a = build_indices(ix.sizes, np.arange(len(ix)), 16, 300, 11); "
              "np.savez(sys.argv[2], **a)")
    subprocess.run([sys.executable, "-c", script, indexed.prefix, str(tmp_path / "other.npz")], cwd=REPO, check=True)
    from nemo_llm.data.gpt_dataset import build_indices

    here = build_indices(indexed.sizes, np.arange(len(indexed)), 16, 300, 11)
    other = np.load(tmp_path / "other.npz")
    assert all(np.array_equal(here[name], other[name]) for name in here)
