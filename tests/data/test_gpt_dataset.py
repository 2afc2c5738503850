import numpy as np
import pytest

from nemo_llm.data.gpt_dataset import DatasetTooSmallError, GPTDataset, PretrainingBatchSampler, build_gpt_datasets, split_documents
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
    tokens = stream(indexed, ds.doc_order)
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
    assert len(ds.doc_order) >= 3 * len(docs)
    assert sorted(ds.doc_order[:len(docs)].tolist()) == docs.tolist()  # each epoch is a permutation
    ds[len(ds) - 1]  # the last sample is readable


def test_deterministic_from_the_seed(indexed):
    docs = np.arange(len(indexed))
    a = GPTDataset(indexed, docs, 16, 100, seed=7)
    b = GPTDataset(indexed, docs, 16, 100, seed=7)
    c = GPTDataset(indexed, docs, 16, 100, seed=8)
    assert all(a[i]["tokens"].equal(b[i]["tokens"]) for i in range(100))
    assert not all(a[i]["tokens"].equal(c[i]["tokens"]) for i in range(10))


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
