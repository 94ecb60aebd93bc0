"""The three tokenizers: lossless round trips (property tests), end-of-text handling, unknown
characters, saving and loading, hashes, the bytes each token stands for, and clean errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinygpt import tokenizers
from tinygpt.common import TinyGPTError
from tinygpt.documents import split_documents
from tinygpt.tokenizers import (
    EOT_SEPARATOR,
    EOT_TEXT,
    MAX_TRAINING_WORD,
    CharTokenizer,
    load_tokenizer,
    short_words,
    train_tokenizer,
)

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NO_SPACE_STAND_IN = st.text(alphabet=st.characters(blacklist_characters="\u2581", blacklist_categories=("Cs",)))


@pytest.fixture(scope="module")
def bpe(train_docs):
    return train_tokenizer("bpe", train_docs[:300], 300)


@pytest.fixture(scope="module")
def sentencepiece(train_docs):
    return train_tokenizer("sentencepiece", train_docs[:300], 400)


@pytest.fixture(scope="module")
def char(train_docs):
    """Trained on the whole of train.txt, which lacks '/', '9' and U+200A that valid.txt has."""
    return train_tokenizer("char", train_docs, 0)


@pytest.fixture(params=["bpe", "sentencepiece", "char"])
def any_tokenizer(request):
    return request.getfixturevalue(request.param)


def char_text(tokenizer: CharTokenizer):
    return st.text(alphabet=st.sampled_from(tokenizer.chars))


# ---------------------------------------------------------------- round trips


@PROPERTY
@given(text=st.text())
def test_bpe_round_trips_every_text(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


@PROPERTY
@given(text=NO_SPACE_STAND_IN)
def test_sentencepiece_round_trips_every_text_without_its_space_stand_in(sentencepiece, text):
    # U+2581 is SentencePiece's own stand-in for a space: a literal one comes back as a space (documented).
    assert sentencepiece.decode(sentencepiece.encode(text)) == text


@PROPERTY
@given(data=st.data())
def test_char_round_trips_every_text_over_its_characters(char, data):
    text = data.draw(char_text(char))
    assert char.decode(char.encode(text)) == text


@PROPERTY
@given(data=st.data())
def test_literal_end_of_text_is_ordinary_text(any_tokenizer, data):
    tok = any_tokenizer
    if tok.kind == "char":  # train.txt has no '<', '|' or '>': a vocabulary that has them
        tok = CharTokenizer(tok.chars + "<|>")
    around = char_text(tok) if tok.kind == "char" else NO_SPACE_STAND_IN
    text = data.draw(around) + EOT_TEXT + data.draw(around)
    ids = tok.encode(text)
    assert tok.eot_id not in ids
    assert tok.decode(ids) == text
    ids, _ = tok.encode_docs([text])
    assert ids.tolist().count(tok.eot_id) == 1 and ids[-1] == tok.eot_id


def test_eot_decodes_as_the_separator_line(any_tokenizer):
    tok = any_tokenizer
    ids, _ = tok.encode_docs(["Once upon a time.\n", "The end.\n"])
    assert tok.decode(ids) == "Once upon a time.\n" + EOT_SEPARATOR + "The end.\n" + EOT_SEPARATOR


# ---------------------------------------------------------------- encode_docs


def test_encode_docs_is_encode_plus_eot_per_document(any_tokenizer, train_docs, monkeypatch):
    monkeypatch.setattr(tokenizers, "ENCODE_SLICE_CHARS", 5_000)  # several slices of documents
    tok = any_tokenizer
    docs = train_docs[:40]
    ids, unknown = tok.encode_docs(docs)
    expected = [i for doc in docs for i in [*tok.encode(doc), tok.eot_id]]
    assert ids.dtype == np.uint32
    assert ids.tolist() == expected
    assert unknown == 0
    assert tok.encode_docs([])[0].size == 0


def test_char_encode_docs_maps_unseen_characters_to_unk_and_counts_them(char, valid_txt):
    valid = split_documents(valid_txt.read_text(encoding="utf-8"))
    text = "".join(valid)
    unseen = set(text) - set(char.chars)
    assert unseen == {"/", "9", "\u200a"}
    expected = sum(text.count(c) for c in unseen)
    ids, unknown = char.encode_docs(valid)
    assert unknown == expected == np.count_nonzero(ids == char.unk_id)
    assert np.count_nonzero(ids == char.eot_id) == len(valid)


def test_char_encode_docs_keeps_nul_as_text(char):
    ids, unknown = char.encode_docs(["a\0b", "c"])  # NUL is not in the vocabulary: <unk>, not end-of-text
    assert ids.tolist() == [*char.encode("a"), char.unk_id, *char.encode("b"), char.eot_id, *char.encode("c"), char.eot_id]
    assert unknown == 1


def test_char_train_collects_every_character(train_docs):
    docs = train_docs[:50] + ["\0 nul, \u00e9, \U0001f600"]
    assert CharTokenizer.train(docs).chars == "".join(sorted(set("".join(docs))))


def test_char_encode_prompt_refuses_unseen_characters(char):
    assert char.decode(char.encode_prompt("Once upon a time")) == "Once upon a time"
    with pytest.raises(TinyGPTError, match=r"'9' \(U\+0039\) at position 4"):
        char.encode_prompt("Tom 9 years")


# ---------------------------------------------------------------- bytes per token


def test_a_prompt_with_half_a_surrogate_pair_is_refused_in_one_line(any_tokenizer):
    with pytest.raises(TinyGPTError, match="position 5"):
        any_tokenizer.encode_prompt("Once \ud800 upon")


@PROPERTY
@given(text=NO_SPACE_STAND_IN)
def test_token_bytes_add_up_to_the_utf8_bytes(bpe, sentencepiece, text):
    for tok in (bpe, sentencepiece):
        table = tok.token_bytes()
        assert table[tok.encode(text)].sum() == len(text.encode())
        ids, _ = tok.encode_docs([text, text])
        assert table[ids].sum() == 2 * len(text.encode()) + 2 * len(EOT_SEPARATOR)


@PROPERTY
@given(data=st.data())
def test_char_token_bytes_add_up_to_the_utf8_bytes(char, data):
    text = data.draw(char_text(char))
    assert char.token_bytes()[char.encode(text)].sum() == len(text.encode())


def test_token_bytes_of_a_file_are_its_size(bpe, train_txt, train_docs):
    ids, _ = bpe.encode_docs(train_docs)
    assert bpe.token_bytes()[ids].sum() == train_txt.stat().st_size


# ---------------------------------------------------------------- saving, loading, hashes


def test_save_and_load_keep_ids_and_hash(any_tokenizer, train_docs, tmp_path):
    tok = any_tokenizer
    tok.save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok", expect_kind=tok.kind)
    assert (loaded.kind, loaded.vocab_size, loaded.eot_id, loaded.hash) == (tok.kind, tok.vocab_size, tok.eot_id, tok.hash)
    assert loaded.encode_docs(train_docs[:20])[0].tolist() == tok.encode_docs(train_docs[:20])[0].tolist()
    assert np.array_equal(loaded.token_bytes(), tok.token_bytes())


def test_hash_differs_between_tokenizers(bpe, sentencepiece, char, train_docs):
    others = [train_tokenizer("bpe", train_docs[:300], 290), CharTokenizer(char.chars + "\u200a")]
    hashes = [t.hash for t in (bpe, sentencepiece, char, *others)]
    assert len(set(hashes)) == len(hashes)


def test_load_with_the_wrong_kind_is_an_error(bpe, tmp_path):
    bpe.save(tmp_path / "tok")
    with pytest.raises(TinyGPTError, match="of kind 'bpe', expected 'char'"):
        load_tokenizer(tmp_path / "tok", expect_kind="char")


def test_load_from_a_folder_without_tokenizer_is_an_error(tmp_path):
    with pytest.raises(TinyGPTError, match="no tokenizer in"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("kind", ["bpe", "sentencepiece"])
def test_vocabulary_larger_than_the_text_supports_is_one_clean_line(kind, train_docs):
    with pytest.raises(TinyGPTError) as error:
        train_tokenizer(kind, train_docs[:20], 5000)
    message = str(error.value)
    assert "5000" in message and "\n" not in message and "INTERNAL" not in message and ".cc(" not in message


def test_bpe_trains_on_words_of_bounded_length(train_docs):
    """A run without whitespace longer than MAX_TRAINING_WORD reaches the BPE trainer in parts (its time
    grows with the square of a word's length); other texts reach it as they are."""
    n = MAX_TRAINING_WORD
    texts = [train_docs[0], "x" * n + " y", " " + "日本" * n + " end"]
    parts = list(short_words(texts))
    assert parts[:2] == texts[:2] and "".join(parts[2:]) == texts[2]
    assert [len(p) for p in parts[2:]] == [n, n, 5] and max(map(len, " ".join(parts).split())) <= n + 1
    tok = train_tokenizer("bpe", [*train_docs[:50], "日本" * 20 * n], 300)
    assert tok.decode(tok.encode("日本" * 3 * n)) == "日本" * 3 * n and len(tok.encode("日本" * n)) < 3 * 2 * n
