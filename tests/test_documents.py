"""The document readers: documents split at separator lines, and files read in pieces cut where documents end."""

from __future__ import annotations

from tinygpt import documents
from tinygpt.documents import read_documents, split_documents


def test_split_documents_keeps_the_file_layout():
    text = (
        "<|endoftext|>\n"  # a separator first: an empty document, dropped
        "One.\nTwo lines.\n<|endoftext|>\n"
        "<|endoftext|>\n"  # two separators in a row
        "  \n\t\n<|endoftext|>\n"  # whitespace only: dropped
        "A literal <|endoftext|>\n inside a line is text.\n<|endoftext|>\n"
        "No separator after the last one."
    )
    assert split_documents(text) == [
        "One.\nTwo lines.\n",
        "A literal <|endoftext|>\n inside a line is text.\n",
        "No separator after the last one.",
    ]
    assert split_documents("Ends without the newline.\n<|endoftext|>") == ["Ends without the newline.\n"]


def test_reading_in_small_chunks_gives_the_same_documents(train_txt, train_docs, monkeypatch):
    monkeypatch.setattr(documents, "CHUNK_BYTES", 1000)  # documents straddle many chunk boundaries
    chunks = list(read_documents(train_txt))
    assert len(chunks) > 100
    assert [doc for docs, _ in chunks for doc in docs] == train_docs
    assert sum(nbytes for _, nbytes in chunks) == train_txt.stat().st_size
