import gzip
import json

import pytest

from nemo_llm.data.download import DownloadError, expand_urls, extract, fetch_all, parse_file_numbers
from nemo_llm.data.indexed_dataset import IndexedDataset
from tests.conftest import run_main


def test_file_numbers_and_url_templates():
    assert parse_file_numbers("0-2,5,7-8") == [0, 1, 2, 5, 7, 8]
    assert parse_file_numbers(3) == [3]
    assert expand_urls(["a"], "https://h/{file:02d}.jsonl.zst", "8-10") == [
        "a", "https://h/08.jsonl.zst", "https://h/09.jsonl.zst", "https://h/10.jsonl.zst"]
    with pytest.raises(DownloadError, match=r"file_numbers='0-x'"):
        parse_file_numbers("0-x")
    with pytest.raises(DownloadError, match="url_template needs file_numbers"):
        expand_urls([], "https://h/{file}.zst", None)


def test_fetch_and_extract_skip_what_is_complete(tmp_path):
    import zstandard

    served = tmp_path / "served"
    served.mkdir()
    payload = b'{"text": "hello"}\n' * 1000
    (served / "00.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(payload))
    with gzip.open(served / "01.jsonl.gz", "wb") as f:
        f.write(payload)
    urls = [(served / name).as_uri() for name in ("00.jsonl.zst", "01.jsonl.gz")]
    lines = []
    files = fetch_all(urls, tmp_path / "raw", extract_archives=True, log=lines.append)
    assert [f.name for f in files] == ["00.jsonl", "01.jsonl"]
    assert all(f.read_bytes() == payload for f in files)
    assert len(lines) == 4
    lines.clear()
    fetch_all(urls, tmp_path / "raw", extract_archives=True, log=lines.append)
    assert lines == []  # nothing fetched or extracted twice
    assert not list((tmp_path / "raw").glob("*.part")) and not list((tmp_path / "raw").glob("*.tmp"))


def test_missing_url_and_corrupt_archive_are_clear_errors(tmp_path):
    with pytest.raises(DownloadError, match=r"cannot download file://.*nothing.zst after 1 attempts"):
        from nemo_llm.data.download import download

        download((tmp_path / "nothing.zst").as_uri(), tmp_path / "raw", retries=1)
    broken = tmp_path / "broken.jsonl.zst"
    broken.write_bytes(b"\x28\xb5\x2f\xfd not really zstd")
    with pytest.raises(DownloadError, match=r"cannot extract .*broken\.jsonl\.zst"):
        extract(broken)
    assert not (tmp_path / "broken.jsonl").exists() and not (tmp_path / "broken.jsonl.tmp").exists()


def test_recipe_downloads_extracts_and_prepares_through_main(tmp_path):
    import zstandard

    served = tmp_path / "served"
    served.mkdir()
    for n in range(2):
        text = "".join(json.dumps({"text": f"file {n} doc {i}"}) + "\n" for i in range(30))
        (served / f"{n:02d}.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(text.encode()))
    raw = tmp_path / "raw"
    result = run_main(["stages=[data_preparation]", f"run_dir={tmp_path / 'run'}", "model.tokenizer.library=byte",
                       "data_preparation=pile", f"data_preparation.download.dir={raw}",
                       f"data_preparation.download.url_template='{served.as_uri()}/{{file:02d}}.jsonl.zst'",
                       "data_preparation.download.file_numbers=0-1", "data_preparation.workers=1"])
    assert result.returncode == 0, result.stderr[-3000:]
    dataset = IndexedDataset(tmp_path / "run" / "data" / "pile_text_document")
    assert len(dataset) == 60
    assert bytes(dataset[31][:-1].tolist()).decode() == "file 1 doc 1"
