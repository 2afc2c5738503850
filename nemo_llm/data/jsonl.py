"""jsonl records with their place (file:line), for the readers of task, prompt and SQuAD files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def jsonl_records(path: str | Path, error: type[Exception] = ValueError) -> Iterator[tuple[str, dict[str, Any]]]:
    """("<path>:<line>", record) of each non-blank line; a line that is not a JSON object raises `error`
    naming its place."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{number}: not a JSON record ({e.msg})") from None
            if not isinstance(record, dict):
                raise error(f"{path}:{number}: a record must be a JSON object")
            yield f"{path}:{number}", record
