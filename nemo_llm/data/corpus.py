"""The embedded corpus: English text that exists on any machine with Python, so the demo and
the tests need no download.

It is the reference documentation that CPython ships in pydoc_data.topics (the text of
`help('FOR')` and friends, about 0.5 MB), cut into documents of a few paragraphs each.
"""

from __future__ import annotations

from collections.abc import Iterator

DOCUMENT_CHARS = 800  # paragraphs are grouped until a document reaches about this length


def embedded_documents() -> Iterator[str]:
    """Yield the corpus's documents in a fixed order (the same on every run and machine with the
    same Python version)."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        paragraphs = [p.strip() for p in topics[name].split("\n\n") if p.strip()]
        document: list[str] = []
        size = 0
        for paragraph in paragraphs:
            document.append(paragraph)
            size += len(paragraph)
            if size >= DOCUMENT_CHARS:
                yield "\n\n".join(document)
                document, size = [], 0
        if document:
            yield "\n\n".join(document)
