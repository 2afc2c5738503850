import struct

import numpy as np
import pytest

from nemo_llm.data.indexed_dataset import IndexedDataset, IndexedDatasetError, IndexedDatasetWriter


def write(prefix, documents, dtype=np.uint16):
    writer = IndexedDatasetWriter(prefix, dtype)
    for doc in documents:
        writer.add_document(doc)
    writer.finalize()


def test_roundtrip(tmp_path):
    docs = [[1, 2, 3], [], [65000, 7], list(range(100))]
    write(tmp_path / "d", docs)
    ds = IndexedDataset(tmp_path / "d")
    assert len(ds) == 4
    assert ds.dtype == np.uint16
    for i, doc in enumerate(docs):
        assert ds[i].tolist() == doc
    assert ds.get(3, offset=10, length=5).tolist() == [10, 11, 12, 13, 14]
    assert ds.doc_idx.tolist() == [0, 1, 2, 3, 4]
    assert not list(tmp_path.glob("*.tmp"))


def test_reads_a_file_built_by_hand_in_megatrons_layout(tmp_path):
    """Bytes laid out as Megatron-LM's MMapIndexedDataset writes them, int32 tokens (dtype code 4)."""
    sequences = [[5, 6, 7], [8], [9, 10]]
    tokens = np.array([t for s in sequences for t in s], dtype=np.int32)
    (tmp_path / "m.bin").write_bytes(tokens.tobytes())
    idx = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", 4)
    idx += struct.pack("<Q", 3) + struct.pack("<Q", 3)  # 3 sequences, doc_idx of length 3 (2 documents)
    idx += np.array([3, 1, 2], dtype=np.int32).tobytes()
    idx += np.array([0, 12, 16], dtype=np.int64).tobytes()
    idx += np.array([0, 2, 3], dtype=np.int64).tobytes()  # document 0 = sequences 0-1, document 1 = sequence 2
    (tmp_path / "m.idx").write_bytes(idx)
    ds = IndexedDataset(tmp_path / "m")
    assert ds.dtype == np.int32
    assert [ds[i].tolist() for i in range(3)] == sequences
    assert ds.doc_idx.tolist() == [0, 2, 3]


def test_writer_output_matches_megatrons_layout_byte_for_byte(tmp_path):
    write(tmp_path / "w", [[5, 6, 7], [8]], dtype=np.int32)
    idx = (tmp_path / "w.idx").read_bytes()
    expected = b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 4, 2, 3)
    expected += np.array([3, 1], np.int32).tobytes() + np.array([0, 12], np.int64).tobytes()
    expected += np.array([0, 1, 2], np.int64).tobytes()
    assert idx == expected
    assert (tmp_path / "w.bin").read_bytes() == np.array([5, 6, 7, 8], np.int32).tobytes()


def test_truncated_bin_is_detected(tmp_path):
    write(tmp_path / "t", [[1, 2, 3, 4]])
    data = (tmp_path / "t.bin").read_bytes()
    (tmp_path / "t.bin").write_bytes(data[:-2])
    with pytest.raises(IndexedDatasetError, match=r"t\.bin is truncated or corrupt"):
        IndexedDataset(tmp_path / "t")


def test_truncated_idx_is_detected(tmp_path):
    write(tmp_path / "t", [[1, 2], [3]])
    data = (tmp_path / "t.idx").read_bytes()
    (tmp_path / "t.idx").write_bytes(data[:-8])
    with pytest.raises(IndexedDatasetError, match=r"t\.idx is truncated or corrupt"):
        IndexedDataset(tmp_path / "t")


def test_foreign_file_is_refused(tmp_path):
    (tmp_path / "x.idx").write_bytes(b"not an index at all, just some text")
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(IndexedDatasetError, match="bad magic"):
        IndexedDataset(tmp_path / "x")


def test_missing_files_name_the_fix(tmp_path):
    with pytest.raises(IndexedDatasetError, match="run the data_preparation stage"):
        IndexedDataset(tmp_path / "absent")


def test_aborted_write_leaves_nothing_that_looks_complete(tmp_path):
    writer = IndexedDatasetWriter(tmp_path / "a")
    writer.add_document([1, 2, 3])
    writer.abort()
    assert list(tmp_path.iterdir()) == []
