"""BPE encoded by tiktoken gives exactly the ids of Hugging Face `tokenizers`: on varied and real
text, for every Unicode code point in several contexts, and the file check that decides when
tiktoken may be used at all (otherwise `tokenizers`, with a one-line notice)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from tinygpt import tokenizers
from tinygpt.documents import split_documents
from tinygpt.tokenizers import BYTE_OF_CHAR, EOT_TEXT, GPT2_SPLIT, BPETokenizer, SplitAgreement, train_tokenizer

# Code points the two regex engines class differently, lone surrogates aside, found by
# test_the_regex_engines_class_every_code_point_alike: none with tokenizers 0.23.3 (Oniguruma)
# and tiktoken 0.13.0 or 0.14.0. (Python's `regex` module, with Unicode 17 tables, calls 17,144
# more code points letters than either.) Texts holding any listed one are encoded by `tokenizers`.
SPLIT_DIFFERENCES: frozenset[int] = frozenset()
SURROGATES = set(range(0xD800, 0xE000))

# Characters that each take a different way through GPT2_SPLIT: contractions, letters, digits,
# other symbols, the kinds of whitespace (\s+(?!\S) against \s+), letters and digits beyond ASCII.
REGEX_ALPHABET = " \t\n\r\x0b\x0c\x85\xa0\u2028\u3000'sdmtlvreEAZ09!?.,-_<|>"
REGEX_ALPHABET += "\u00e9\u00df\u0663\u00bd\u65e5\U0001f642\u200b"


@pytest.fixture(scope="module")
def bpe(train_docs) -> BPETokenizer:
    """The shape prepare trains by default: 4,096 tokens on TinyStories."""
    return train_tokenizer("bpe", train_docs, 4096)


@pytest.fixture(scope="module")
def library(bpe, tmp_path_factory) -> HFTokenizer:
    """The same tokenizer as `tokenizers` reads it from the saved file."""
    folder = tmp_path_factory.mktemp("bpe")
    bpe.save(folder)
    return HFTokenizer.from_file(str(folder / BPETokenizer.FILE))


def library_ids(library: HFTokenizer, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in library.encode_batch_fast(texts, add_special_tokens=False)]


def test_a_bpe_trained_here_encodes_with_tiktoken(bpe):
    assert bpe.engine == "tiktoken"


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.text(alphabet=st.sampled_from(REGEX_ALPHABET)) | st.text(), min_size=1, max_size=5))
def test_tiktoken_gives_the_ids_of_tokenizers_on_varied_text(bpe, library, texts):
    texts = [t for t in texts if not SURROGATES.intersection(map(ord, t))]
    assert bpe.encode_batch(texts) == library_ids(library, texts)
    assert [bpe.encode(t) for t in texts] == library_ids(library, texts)


def test_tiktoken_gives_the_ids_of_tokenizers_on_tinystories(bpe, library, train_docs, valid_txt):
    docs = train_docs + split_documents(valid_txt.read_text(encoding="utf-8"))
    ids, _ = bpe.encode_docs(docs)
    expected = [i for doc in library_ids(library, docs) for i in [*doc, bpe.eot_id]]
    assert ids.tolist() == expected
    assert len(expected) > 500_000


def test_the_literal_end_of_text_is_ordinary_text_for_tiktoken(bpe, library):
    text = f"The end.{EOT_TEXT}\n{EOT_TEXT}Once"
    assert bpe.encode(text) == library_ids(library, [text])[0]
    assert bpe.eot_id not in bpe.encode(text) and bpe.decode(bpe.encode(text)) == text


@pytest.mark.slow
def test_tiktoken_gives_the_ids_of_tokenizers_for_every_code_point_in_contexts(bpe, library):
    codes = [c for c in range(0x110000) if c not in SURROGATES and c not in SPLIT_DIFFERENCES]
    texts = []
    for start in range(0, len(codes), 4096):
        texts.append("".join(f" {c}a{c}{c}1\n" for c in map(chr, codes[start : start + 4096])))
    agreement = tokenizers.split_agreement()
    assert agreement.check_all() == SURROGATES | SPLIT_DIFFERENCES
    assert all(map(agreement.agree_on, texts))  # so these go through tiktoken
    assert bpe.encode_batch(texts) == library_ids(library, texts)


@pytest.mark.slow
def test_the_regex_engines_class_every_code_point_alike():
    different = tokenizers.split_agreement().check_all()
    assert different - SURROGATES == SPLIT_DIFFERENCES, "update SPLIT_DIFFERENCES: texts with these fall back"
    assert SURROGATES <= different


def test_split_agreement_finds_characters_the_engines_class_differently(monkeypatch):
    # POSIX [[:alpha:]] is Unicode letters to Oniguruma and ASCII letters to Rust's regex.
    monkeypatch.setattr(SplitAgreement, "CLASSES", (r"\p{N}", "[[:alpha:]]"))
    agreement = SplitAgreement()
    assert agreement.agree_on("Once upon a time") and agreement.agree_on("twelve: \u0663\u0664, \u00bd")
    assert not agreement.agree_on("caf\u00e9") and not agreement.agree_on("\u65e5")
    assert {0xE9, 0x65E5} <= agreement.different and 0x0663 not in agreement.different


def test_texts_with_characters_split_differently_go_to_tokenizers(bpe, library, monkeypatch):
    class Disagree:
        def agree_on(self, text):
            return "\u00e9" not in text

    calls = []
    encode = bpe._tiktoken.encode_ordinary
    monkeypatch.setattr(tokenizers, "split_agreement", Disagree)
    monkeypatch.setattr(bpe._tiktoken, "encode_ordinary", lambda text: calls.append(text) or encode(text))
    texts = ["Once upon a time", "caf\u00e9 au lait", "", "the end", "\u00e9"]
    assert bpe.encode_batch(texts) == library_ids(library, texts)
    assert calls == ["Once upon a time", "", "the end"]


def test_lone_surrogates_fail_as_tokenizers_fails(bpe, library):
    assert not tokenizers.split_agreement().agree_on("Once \ud800 upon")
    with pytest.raises(TypeError):
        library.encode_batch(["Once \ud800 upon"])
    with pytest.raises(TypeError):
        bpe.encode("Once \ud800 upon")


# ---------------------------------------------------------------- the file check


def edited(bpe: BPETokenizer, edit) -> HFTokenizer:
    spec = json.loads(bpe._tok.to_str())
    edit(spec)
    return HFTokenizer.from_str(json.dumps(spec))


def swap_two_merges(spec):
    merges = spec["model"]["merges"]
    merges[0], merges[1] = merges[1], merges[0]


def set_in(*keys, value):
    def edit(spec):
        part = spec
        for key in keys[:-1]:
            part = part[key]
        part[keys[-1]] = value

    return edit


POST_PROCESSOR = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
EDITS = {
    "a normalizer": (set_in("normalizer", value={"type": "NFC"}), "it has a normalizer"),
    "a post-processor": (set_in("post_processor", value=POST_PROCESSOR), "post-processor"),
    "a prefix space": (set_in("pre_tokenizer", "add_prefix_space", value=True), "pre-tokenizer is not ByteLevel"),
    "no regex": (set_in("pre_tokenizer", "use_regex", value=False), "pre-tokenizer is not ByteLevel"),
    "another pre-tokenizer": (set_in("pre_tokenizer", value={"type": "Whitespace"}), "pre-tokenizer is not ByteLevel"),
    "dropout": (set_in("model", "dropout", value=0.1), "not plain BPE (BPE, dropout)"),
    "a word suffix": (set_in("model", "end_of_word_suffix", value="</w>"), "end_of_word_suffix"),
    "byte fallback": (set_in("model", "byte_fallback", value=True), "byte_fallback"),
    "ignore_merges": (set_in("model", "ignore_merges", value=True), "ignore_merges"),
    "merges out of id order": (swap_two_merges, "merge i does not make token 256 + i"),
}


@pytest.mark.parametrize("edit, reason", EDITS.values(), ids=EDITS.keys())
def test_a_file_tiktoken_cannot_match_keeps_tokenizers_with_a_one_line_notice(bpe, edit, reason, capsys):
    tok = BPETokenizer(edited(bpe, edit))
    assert tok.engine == "tokenizers"
    notice = capsys.readouterr().err
    assert notice.startswith("tinygpt: note: BPE encoding uses tokenizers") and notice.count("\n") == 1
    assert reason in notice
    if "dropout" not in reason:  # dropout draws at random
        assert tok.encode("Once upon a time, Tom's 2 cats") == tok._tok.encode("Once upon a time, Tom's 2 cats").ids


def test_added_tokens_keep_tokenizers(bpe, capsys):
    hf = HFTokenizer.from_str(bpe._tok.to_str())
    hf.add_special_tokens(["<pad>"])
    assert BPETokenizer(hf).engine == "tokenizers"
    assert "it has added tokens" in capsys.readouterr().err


def test_without_tiktoken_installed_tokenizers_encodes(bpe, library, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # import tiktoken raises ImportError
    tok = BPETokenizer(HFTokenizer.from_str(bpe._tok.to_str()))
    assert tok.engine == "tokenizers" and "tiktoken is not installed" in capsys.readouterr().err
    assert tok.encode_batch(["Once upon a time"]) == library_ids(library, ["Once upon a time"])


def test_a_token_that_does_not_encode_to_itself_keeps_tokenizers(capsys):
    # Merges b+c, a+b, ab+c: "abc" becomes [a, bc] in tokenizers (a+b is never adjacent once b+c
    # merged), but tiktoken returns a piece that is a whole token, "abc", as is.
    alphabet = {c: i for i, c in enumerate(BYTE_OF_CHAR)}
    merges = [("b", "c"), ("a", "b"), ("ab", "c")]
    hf = HFTokenizer(models.BPE(alphabet | {a + b: 256 + i for i, (a, b) in enumerate(merges)}, merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    ranks = {bytes([BYTE_OF_CHAR[c]]): i for c, i in alphabet.items()} | {b"bc": 256, b"ab": 257, b"abc": 258}
    raw = tiktoken.Encoding("raw", pat_str=GPT2_SPLIT, mergeable_ranks=ranks, special_tokens={})
    assert hf.encode("abc").ids == [alphabet["a"], 256] and raw.encode_ordinary("abc") == [258]
    tok = BPETokenizer(hf)
    assert tok.engine == "tokenizers" and tok.encode("abc") == [alphabet["a"], 256]
    assert "1 of its tokens do not encode to themselves (one: 'abc')" in capsys.readouterr().err


def test_worker_processes_do_not_repeat_the_notice(bpe, monkeypatch, capsys):
    monkeypatch.setattr(tokenizers.multiprocessing, "parent_process", lambda: object())
    assert BPETokenizer(edited(bpe, set_in("normalizer", value={"type": "NFC"}))).engine == "tokenizers"
    assert capsys.readouterr().err == ""


def test_the_byte_alphabet_is_the_one_tokenizers_uses(bpe):
    # Each byte alone, through tokenizers, is the id of its stand-in character.
    vocab = bpe._tok.get_vocab()
    for byte in range(128):
        assert bpe._tok.encode(chr(byte)).ids == [vocab[next(c for c, b in BYTE_OF_CHAR.items() if b == byte)]]
    assert sorted(BYTE_OF_CHAR.values()) == list(range(256))
    assert np.all(bpe.token_bytes()[:256] == 1)
