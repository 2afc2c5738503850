"""Recipe steps before preprocessing: download files (resumable) and extract .zst/.gz archives.

Both steps write under a temporary name and rename when done, so a re-run after a crash or a
lost connection skips what is complete and continues what is not (an interrupted download
resumes with an HTTP Range request where the server allows it).
"""

from __future__ import annotations

import gzip
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlparse

from nemo_llm.errors import NemoLLMError

CHUNK = 8 << 20


class DownloadError(NemoLLMError, OSError):
    """A file that could not be fetched or extracted; the message names it."""


def parse_file_numbers(spec: str | int | None) -> list[int]:
    """'0-29' or '0,3,5-7' -> the listed numbers (NeMo launcher's file_numbers)."""
    if spec is None or spec == "":
        return []
    numbers: list[int] = []
    try:
        for part in str(spec).split(","):
            first, _, last = part.strip().partition("-")
            numbers.extend(range(int(first), int(last or first) + 1))
    except ValueError:
        raise DownloadError(f"data_preparation.download.file_numbers={spec!r}: use numbers and ranges like '0-29' "
                            "or '0,3,5-7'") from None
    return numbers


def expand_urls(urls: Sequence[str], url_template: str | None, file_numbers: str | int | None) -> list[str]:
    """The listed URLs plus the template filled with each file number ({file} in the template)."""
    expanded = list(urls)
    if url_template:
        numbers = parse_file_numbers(file_numbers)
        if not numbers:
            raise DownloadError("data_preparation.download.url_template needs file_numbers, e.g. '0-29'")
        expanded.extend(url_template.format(file=n) for n in numbers)
    return expanded


def download(url: str, directory: str | Path, retries: int = 3, log=print) -> Path:
    """<directory>/<file name of the URL>, fetched unless already there."""
    target = Path(directory) / Path(unquote(urlparse(url).path)).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    for attempt in range(1, retries + 1):
        try:
            _fetch(url, partial)
            break
        except (urllib.error.URLError, OSError) as e:
            if attempt == retries:
                raise DownloadError(f"cannot download {url} after {retries} attempts ({e}); "
                                    f"re-run to resume from {partial}") from None
            time.sleep(2 ** attempt)
    partial.replace(target)
    log(f"downloaded {url} -> {target}")
    return target


def _fetch(url: str, partial: Path) -> None:
    have = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        # 206: the server continues where we stopped; anything else sends the whole file again.
        mode = "ab" if have and getattr(response, "status", None) == 206 else "wb"
        with open(partial, mode) as out:
            shutil.copyfileobj(response, out, CHUNK)


def extract(path: str | Path, log=print) -> Path:
    """Decompress a .zst or .gz file next to itself (the suffix dropped), unless done already."""
    path = Path(path)
    if path.suffix not in (".zst", ".gz"):
        return path
    target = path.with_suffix("")
    if target.is_file():
        return target
    tmp = target.with_name(target.name + ".tmp")
    try:
        with open(path, "rb") as source, open(tmp, "wb") as out:
            if path.suffix == ".gz":
                with gzip.open(source) as stream:
                    shutil.copyfileobj(stream, out, CHUNK)
            else:
                import zstandard

                zstandard.ZstdDecompressor().copy_stream(source, out, read_size=CHUNK, write_size=CHUNK)
    except Exception as e:  # OSError, EOFError, zstandard.ZstdError: a truncated or corrupt archive
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"cannot extract {path} ({e}): delete it and re-run to download it again") from None
    tmp.replace(target)
    log(f"extracted {path} -> {target}")
    return target


def fetch_all(urls: Sequence[str], directory: str | Path, extract_archives: bool, workers: int = 4,
              log=print) -> list[Path]:
    """Download every URL (in parallel threads) and extract the archives; returns the local files."""

    def one(url: str) -> Path:
        local = download(url, directory, log=log)
        return extract(local, log=log) if extract_archives else local

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(urls)))) as pool:
        return list(pool.map(one, urls))
