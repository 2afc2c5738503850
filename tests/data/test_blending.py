import numpy as np
import pytest

from nemo_llm.config import ConfigError, compose, validate
from nemo_llm.data.blending import BlendedDataset, DataPrefixError, blend_order, parse_data_prefix
from nemo_llm.data.gpt_dataset import build_gpt_datasets
from nemo_llm.data.indexed_dataset import IndexedDatasetWriter


def test_parse_data_prefix():
    assert parse_data_prefix("a/b") == [(1.0, "a/b")]
    assert parse_data_prefix([3, "x", 1, "y"]) == [(0.75, "x"), (0.25, "y")]
    for bad in ([1, "x", 2], ["x", 1], [0, "x"], [-1, "x", 2, "y"], []):
        with pytest.raises(DataPrefixError, match="model.data.data_prefix"):
            parse_data_prefix(bad)


def test_blend_follows_the_weights_in_every_prefix():
    weights = [0.5, 0.3, 0.2]
    owners, within = blend_order(weights, 5000)
    for n in (100, 1000, 3333, 5000):
        counts = np.bincount(owners[:n], minlength=3)
        assert np.all(np.abs(counts - np.array(weights) * n) <= 1.0), (n, counts)
    for d in range(3):  # each dataset is read in order, every sample once
        assert within[owners == d].tolist() == list(range((owners == d).sum()))
    again = blend_order(weights, 5000)
    assert np.array_equal(owners, again[0]) and np.array_equal(within, again[1])


def test_blended_dataset_reads_its_members():
    a, b = list(range(100)), list(range(1000, 1100))
    blended = BlendedDataset([a, b], [0.75, 0.25], 80)
    values = [blended[i] for i in range(80)]
    assert sum(v < 1000 for v in values) == 60 and sum(v >= 1000 for v in values) == 20
    with pytest.raises(ValueError, match="blend needs"):
        BlendedDataset([a, b[:5]], [0.5, 0.5], 80)


def write_corpus(prefix, token, documents=40, length=50):
    writer = IndexedDatasetWriter(prefix)
    for _ in range(documents):
        writer.add_document([token] * length)
    writer.finalize()


def test_build_gpt_datasets_blends_corpora_by_weight(tmp_path):
    write_corpus(tmp_path / "a", 1)
    write_corpus(tmp_path / "b", 2)
    datasets = build_gpt_datasets([0.7, str(tmp_path / "a"), 0.3, str(tmp_path / "b")], [0.8, 0.1, 0.1], 16,
                                  seed=0, train_samples=2000)
    train = datasets["train"]
    assert len(train) == 2000  # several epochs of each corpus as needed
    from_a = sum(int(train[i]["tokens"][0]) == 1 for i in range(2000))
    assert from_a == pytest.approx(1400, abs=20)  # within 1%
    assert set(datasets) == {"train", "validation", "test"}


def test_bad_blend_is_a_config_error():
    with pytest.raises(ConfigError, match="model.data.data_prefix"):
        validate(compose(["model.data.data_prefix=[1,a,b]"]))
