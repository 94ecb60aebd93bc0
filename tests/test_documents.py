"""Reading text the way people save it: separator lines with any line ending, byte-order marks,
suffixes in any case, pieces of bounded size cut at safe points, the bytes every text consumed,
undecodable text, JSON records, and which files are read."""

from __future__ import annotations

import io
import json
import os
import re
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygpt import documents
from tinygpt.common import TinyGPTError
from tinygpt.config import load_config
from tinygpt.documents import (
    Reader,
    character_cut,
    cut_text,
    find_inputs,
    normalize_line_endings,
    safe_cut,
    split_documents,
    whole_documents,
)
from tinygpt.prepare import prepare

SEP = "<|endoftext|>"


def pieces_of(text: str | bytes, **reader) -> tuple[list[documents.Piece], Reader]:
    data = text.encode() if isinstance(text, str) else text
    r = Reader(**reader)
    return list(r.read_text_stream(io.BytesIO(data), "mem.txt")), r


def reference_documents(text: str) -> list[str]:
    """An independent reading of the rules: line endings to \\n, then lines that are exactly the separator."""
    lines = normalize_line_endings(text).split("\n")
    docs = [""]
    for i, line in enumerate(lines):
        if line == SEP:
            docs.append("")
        else:
            docs[-1] += line + ("\n" if i < len(lines) - 1 else "")
    return docs[:-1] if docs[-1] == "" else docs


# ---------------------------------------------------------------- separator lines and line endings


def test_separator_lines_with_every_line_ending():
    text = (
        f"{SEP}\n"  # a separator first: an empty document, kept
        f"One.\r\nTwo lines.\r\n{SEP}\r\n"  # CRLF everywhere
        f"{SEP}\r"  # CR only, and two separators in a row: another empty document
        f"  \n\t\n{SEP}\n"  # whitespace only: kept as it is
        f"A literal {SEP}\n inside a line is text, as is {SEP} after one.\n{SEP}x\n{SEP}\n"
        f"The last line is a separator without a line ending.\n{SEP}"
    )
    assert split_documents(text) == [
        "",
        "One.\nTwo lines.\n",
        "",
        "  \n\t\n",
        f"A literal {SEP}\n inside a line is text, as is {SEP} after one.\n{SEP}x\n",
        "The last line is a separator without a line ending.\n",
    ]
    assert split_documents("no separator at the end\r\nat all\r") == ["no separator at the end\nat all\n"]
    assert split_documents("kept\r\nas\rit is\n", line_endings="keep") == ["kept\r\nas\rit is\n"]


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.sampled_from(["a", "b", " ", "\t", "\n", "\r\n", "\r", "é", "日", "😀", "\u3000", SEP])),
    chunk=st.integers(16, 40),
    bom=st.booleans(),
)
def test_any_text_in_small_pieces_reads_as_the_reference_and_adds_up_to_its_size(parts, chunk, bom):
    """Line endings, separators and characters cut by the piece boundaries anywhere."""
    text = "".join(parts)
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode()
    saved = documents.CHUNK_BYTES
    documents.CHUNK_BYTES = chunk  # (hypothesis forbids monkeypatch in a given test)
    try:
        pieces, reader = pieces_of(data)
    finally:
        documents.CHUNK_BYTES = saved
    assert sum(n for piece in pieces for n in piece.nbytes) == len(data)
    assert all(sum(piece.nbytes) <= chunk + 2 + 3 * bom for piece in pieces)
    assert whole_documents(pieces) == (reference_documents(text) or ([""] if data else []))
    assert reader.stats.cr_line_endings == text.count("\r")
    assert reader.stats.boms == bom


def test_crlf_split_by_a_read_is_one_line_ending(monkeypatch):
    text = "x" * 13 + "\r\n" + f"{SEP}\r\n" + "y\r\n" * 20
    for chunk in range(16, 40):  # every position of the \r\n against the block boundary
        monkeypatch.setattr(documents, "CHUNK_BYTES", chunk)
        pieces, _ = pieces_of(text)
        assert whole_documents(pieces) == ["x" * 13 + "\n", "y\n" * 20], chunk


def test_reading_in_small_chunks_gives_the_same_documents(train_txt, train_docs, monkeypatch):
    monkeypatch.setattr(documents, "CHUNK_BYTES", 1000)  # documents straddle many chunk boundaries
    pieces = list(Reader().read(train_txt))
    assert len(pieces) > 100
    assert whole_documents(pieces) == train_docs and len(train_docs) == 2316
    assert sum(n for piece in pieces for n in piece.nbytes) == train_txt.stat().st_size


def test_normalize_line_endings():
    assert normalize_line_endings("a\r\nb\rc\n\r\n") == "a\nb\nc\n\n"
    assert normalize_line_endings("as is\n") == "as is\n"


# ---------------------------------------------------------------- bounded pieces, safe cuts


def test_a_long_document_is_cut_between_a_word_and_the_space_after_it(monkeypatch):
    monkeypatch.setattr(documents, "CHUNK_BYTES", 64)
    text = "Once upon a time,\tthere was a  cat.\n" * 40  # one 1,440-byte document, no separator
    pieces, reader = pieces_of(text)
    assert len(pieces) > 20 and all(sum(piece.nbytes) <= 64 for piece in pieces)
    for before, after in pairwise(pieces):
        assert after.continues and before.open_end
        assert not before.texts[-1][-1].isspace() and after.texts[0][0] in " \t\n"
    assert whole_documents(pieces) == [text] and reader.stats.char_cuts == 0


@pytest.mark.parametrize("text", ["日本語の文章には空白がない。" * 30, "QUJDRA+/=" * 120, "\u3000" * 100 + " " * 200])
def test_text_without_safe_points_is_cut_at_character_boundaries_and_counted(text, monkeypatch):
    monkeypatch.setattr(documents, "CHUNK_BYTES", 64)
    pieces, reader = pieces_of(text)
    assert whole_documents(pieces) == [text]  # every cut at a character boundary: the text decodes whole
    assert reader.stats.char_cuts == len(pieces) - 1 > 5


def test_a_cut_inside_a_line_does_not_make_a_separator_line(monkeypatch):
    monkeypatch.setattr(documents, "CHUNK_BYTES", 16)
    text = "x" * 16 + f"{SEP}\n" + "y" * 16 + f" {SEP}\n"  # cut right before each literal
    pieces, reader = pieces_of(text)
    assert whole_documents(pieces) == [text] and reader.stats.char_cuts >= 1


def test_safe_cut_never_follows_whitespace():
    for ws in (" ", "\t", "\n", "\u3000", "\u00a0", "\u2003", "\x1c"):
        data = f"word{ws} next".encode()
        assert safe_cut(data, 0, len(data)) == 4 if ws in " \t\n" else safe_cut(data, 0, len(data)) == 0, repr(ws)
    data = "a 日 b".encode()
    assert safe_cut(data, 0, len(data)) == data.index(b" b")  # after a multi-byte letter
    assert safe_cut(b"abc", 0, 3) == 0


def test_character_cut_keeps_characters_and_separator_lines_whole():
    data = "éééé".encode()
    assert character_cut(data, 0, 3) == 2  # 3 is inside the second é
    data = b"x" * 20 + b"\n" + SEP.encode() + b"\n"
    assert character_cut(data, 0, 30) == 21  # not inside the separator line: at its start
    assert character_cut(b"ab\r\ncd" + b"x" * 20, 0, 3) == 4  # not between \r and \n


def test_cut_text_parts_fit_and_join():
    text = "word " * 100 + "日" * 100
    parts = cut_text(text, 50)
    assert "".join(parts) == text and all(len(p.encode()) <= 50 for p in parts)


# ---------------------------------------------------------------- byte-order marks, undecodable text


BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize("name, content", [
    ("a.txt", BOM + f"One.\n{SEP}\nTwo.\n".encode()),
    ("a.jsonl", BOM + b'{"text": "One.\\n"}\n{"text": "Two.\\n"}\n'),
    ("a.json", BOM + b'[{"text": "One.\\n"}, {"text": "Two.\\n"}]'),
])  # fmt: skip
def test_byte_order_marks_are_dropped_in_every_format(name, content, tmp_path):
    (tmp_path / name).write_bytes(content)
    reader = Reader()
    assert whole_documents(list(reader.read(tmp_path / name))) == ["One.\n", "Two.\n"]
    assert reader.stats.boms == 1


def test_not_utf8_is_reported_with_file_and_offset_or_replaced(tmp_path, monkeypatch):
    monkeypatch.setattr(documents, "CHUNK_BYTES", 64)  # the bad byte lies several chunks in
    good = ("Once upon a time there was a cat.\n" * 5 + SEP + "\n").encode()
    cases = {  # file -> (content, offset of the bad byte)
        "stories.txt": (good * 3 + b"A caf\xe9 sold tea.\n", len(good) * 3 + 5),
        "stories.jsonl": (b'{"text": "fine"}\n' * 9 + b'{"text": "caf\xe9"}\n', 17 * 9 + 13),
        "stories.json": (b"[" + b'{"text": "fine"}, ' * 9 + b'{"text": "caf\xe9"}]', 1 + 18 * 9 + 13),
    }
    for name, (content, offset) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(TinyGPTError, match=rf"{name} is not UTF-8: byte 0xe9 at offset {offset} \(use --errors replace"):
            list(Reader().read(path))
        docs = whole_documents(list(Reader(errors="replace").read(path)))
        assert any("caf\ufffd" in doc for doc in docs)
        if name.endswith(".txt"):  # S counts the replaced byte as itself
            assert sum(n for piece in Reader(errors="replace").read(path) for n in piece.nbytes) == len(content)


@pytest.mark.parametrize("name, content", [
    ("s.jsonl", '{"text": "fine"}\n{"text": "half a pair \\ud800 here"}\n'),
    ("s.json", '[{"text": "fine"}, {"text": "half a pair \\ud800 here"}]'),
])  # fmt: skip
def test_lone_surrogates_in_json_are_an_error_or_replaced(name, content, tmp_path):
    path = tmp_path / name
    path.write_text(content)
    where = "line 2" if name.endswith("l") else "item 1"
    with pytest.raises(TinyGPTError, match=rf"{name} {where}: its text field has a lone surrogate U\+D800 at character 12"):
        list(Reader().read(path))
    assert whole_documents(list(Reader(errors="replace").read(path))) == ["fine", "half a pair \ufffd here"]
    pair = tmp_path / f"pair{path.suffix}"  # an escaped pair is one character, not an error
    pair.write_text(content.replace("\\ud800", "\\ud83d\\ude00"))
    assert whole_documents(list(Reader().read(pair)))[1] == "half a pair 😀 here"


# ---------------------------------------------------------------- JSON records


def test_json_records_count_their_text_plus_an_end_of_text_token(tmp_path, monkeypatch):
    monkeypatch.setattr(documents, "CHUNK_BYTES", 100)  # many windows of the file, records across them
    records = [{"id": i, "text": f"Story {i}: caf\u00e9 \r\n{'la ' * i}", "meta": {"a": [1, 2]}} for i in range(60)]
    path = tmp_path / "s.json"
    path.write_text(json.dumps(records, indent=2))
    pieces = list(Reader().read(path))
    expected = [normalize_line_endings(r["text"]) for r in records]
    assert whole_documents(pieces) == expected
    assert sum(n for piece in pieces for n in piece.nbytes) == sum(len(r["text"].encode()) + 14 for r in records)
    long = tmp_path / "long.jsonl"  # a record much longer than a piece is cut into parts
    long.write_text(json.dumps({"text": "a long story " * 100}) + "\n")
    pieces = list(Reader().read(long))
    assert len(pieces) > 10 and whole_documents(pieces) == ["a long story " * 100]
    assert not pieces[-1].open_end and all(p.open_end for p in pieces[:-1])


@pytest.mark.parametrize("content, error", [
    ('[{"text": 5}]', "item 0: its text field 'text' is a number, not a string"),
    ('[{"text": null}]', "item 0: its text field 'text' is null, not a string"),
    ('[{"text": ["a", "b"]}]', "item 0: its text field 'text' is a list, not a string"),
    ('[{"story": "elsewhere"}]', "item 0 has no text field 'text' (set data.text_field"),
    ('["just a string"]', "item 0 is a string, not an object with a text field 'text'"),
    ('{"text": "an object"}', "is not a JSON array of objects"),
    ('[{"text": "a"}, {"text": ', "is not valid JSON (it ends too early"),
    ('[{"text": "a"} {"text": "b"}]', "is not valid JSON (expecting ',' or ']' after an item at offset 15)"),
    ('[{"text": "a"}] trailing', "is not valid JSON (more data after the array at offset 16)"),
])  # fmt: skip
def test_json_errors_name_the_record(content, error, tmp_path):
    path = tmp_path / "s.json"
    path.write_text(content)
    with pytest.raises(TinyGPTError, match=re.escape(error)):
        list(Reader().read(path))


def test_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "fine"}\n\n{"text": true}\n')
    with pytest.raises(TinyGPTError, match=r"s.jsonl line 3: its text field 'text' is a boolean, not a string"):
        list(Reader().read(path))
    path.write_text('{"text": "fine"}\r\n{"text": oops}\r\n')
    with pytest.raises(TinyGPTError, match=r"s.jsonl line 2: not valid JSON"):
        list(Reader().read(path))


# ---------------------------------------------------------------- which files are read


def test_suffixes_in_any_case_and_skipped_files_listed(tmp_path):
    for name in ("a.TXT", "b.Jsonl", "sub/c.JSON", "notes.md", "data.txt.gz", "sub/archive.ZIP"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text('[{"text": "x"}]' if "json" in name.lower() else "x")
    found = find_inputs([str(tmp_path)])
    assert [p.name for p in found.train] == ["a.TXT", "b.Jsonl", "c.JSON"]
    assert f"skipped: {tmp_path / 'notes.md'}: .md is not read; only .txt, .jsonl and .json are" in found.notes
    assert f"skipped: {tmp_path / 'data.txt.gz'}: .gz is not read; decompress it first" in found.notes
    assert f"skipped: {tmp_path / 'sub' / 'archive.ZIP'}: .ZIP is not read; decompress it first" in found.notes
    assert [p.name for p in find_inputs([str(tmp_path / "*.*")]).train] == ["a.TXT", "b.Jsonl"]
    explicit = find_inputs([str(tmp_path / "notes.md")])  # named: read, as plain text, and said so
    assert explicit.train == [tmp_path / "notes.md"] and "read as plain text" in explicit.notes[0]
    with pytest.raises(TinyGPTError, match=r"data.txt.gz: .gz is not read; decompress it first"):
        find_inputs([str(tmp_path / "data.txt.gz")])
    with pytest.raises(TinyGPTError, match=r"no .txt, .jsonl or .json files in .* \(skipped: notes.md"):
        find_inputs([str(tmp_path / "*.md")])


def test_a_prepared_folder_inside_an_input_folder_is_skipped(tmp_path, tokenizer_folders):
    """Preparing a folder again into another subfolder does not read the first output's manifest and
    tokenizer files as JSON input (it did: 'manifest.json is not a JSON array of objects')."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("Once upon a time.\n")
    out = tmp_path / "in" / "v1"
    prepare([str(tmp_path / "in")], out, load_config(None, {"data.workers": "1", "data.val_fraction": "0",
            "tokenizer.kind": "char"}), tokenizer_from=str(tokenizer_folders["char"]), progress=False)  # fmt: skip
    for spec in (tmp_path / "in", tmp_path / "in" / "**" / "*"):
        found = find_inputs([str(spec)])
        assert found.train == [tmp_path / "in" / "a.txt"]
        assert f"skipped: {out}: a prepared-data folder (its manifest and tokenizer are not text)" in found.notes


def test_an_input_given_twice_is_read_once_and_validation_is_left_out(tmp_path):
    (tmp_path / "data").mkdir()
    for name in ("a.txt", "b.txt", "valid.txt"):
        (tmp_path / "data" / name).write_text(name)
    os.symlink(tmp_path / "data" / "valid.txt", tmp_path / "link.txt")
    found = find_inputs([str(tmp_path / "data"), str(tmp_path / "data" / "a.txt")], val=str(tmp_path / "link.txt"))
    assert [p.name for p in found.train] == ["a.txt", "b.txt"] and [p.name for p in found.val] == ["link.txt"]
    assert any("a.txt is given twice" in note for note in found.notes)
    assert f"{tmp_path / 'data' / 'valid.txt'} is a validation file: left out of training" in found.notes
    with pytest.raises(TinyGPTError, match="every input is also a validation file"):
        find_inputs([str(tmp_path / "data" / "valid.txt")], val=str(tmp_path / "link.txt"))
