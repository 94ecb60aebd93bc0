"""Tests for tinygpt.generate: the KV cache changes speed, never tokens (within the context,
and past it for gpt2); llama's cache slides past it; seeds reproduce; streamed text never
splits a character; `tinygpt sample` streams, pipes and fails in one line.

Models are tiny and random, tokenizers trained here on a slice of the TinyStories sample.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import pytest
import torch

from tinygpt.checkpoint import MARKER, STATE, save_checkpoint
from tinygpt.cli import main
from tinygpt.common import TinyGPTError
from tinygpt.config import Config, ModelConfig, dump_toml
from tinygpt.engine import SamplingParams, context_keep
from tinygpt.generate import Sampler, TextStream, generate_ids
from tinygpt.model import GPT
from tinygpt.run import Run
from tinygpt.tokenizers import train_tokenizer

FAMILIES = ["gpt2", "llama"]
BLOCK = 32
UNICODE_TEXT = "Lily saw a 🐶 and said “¡Olé!” — the café’s crème brûlée 😀👍🏽 was naïve."


@pytest.fixture(scope="module")
def stories(text_files) -> list[str]:
    text = text_files[0].read_text(encoding="utf-8")[:100_000]
    return [s.strip() for s in text.split("<|endoftext|>") if s.strip()]


@pytest.fixture(scope="module")
def bpe(stories):
    return train_tokenizer("bpe", stories, 300)


def random_model(family: str, vocab_size: int, **overrides) -> GPT:
    """A random model whose matrices are drawn wide (std 0.5): greedy text then varies from
    token to token, where a freshly initialised model repeats one token and would make every
    comparison below trivially true."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(family, vocab_size, BLOCK, n_layer=2, n_head=2, n_embd=32, **overrides))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5)
    return model.eval()


def greedy(model: GPT, prompt: list[int], n: int) -> list[int]:
    return list(generate_ids(model, prompt, max_new_tokens=n, temperature=0))


@torch.no_grad()
def greedy_reference(model: GPT, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding without a cache: the whole visible window runs again at every step.

    The window is what generate_ids promises a gpt2 model sees: it grows to block_size
    tokens, then restarts from the last context_keep(block_size) tokens. (A llama cache
    slides instead, its kept keys computed with the older context: true only within the
    first window.)
    """
    seq, start = list(prompt[-BLOCK:]), 0
    for _ in range(n):
        logits, _ = model(torch.tensor([seq[start:]]))
        seq.append(int(logits[0, -1].argmax()))
        if len(seq) - start > BLOCK:
            start = len(seq) - context_keep(BLOCK)
    return seq[len(prompt[-BLOCK:]) :]


# ---------------------------------------------------------------- token ids


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_greedy_equals_recomputing_within_the_context(family):
    model = random_model(family, 300)
    prompt = [5, 17, 42]
    ours = greedy(model, prompt, BLOCK - len(prompt))
    assert ours == greedy_reference(model, prompt, BLOCK - len(prompt))
    assert len(set(ours)) > 5  # the comparison is not between two runs of one repeated token


def test_gpt2_generation_past_the_context_rebuilds_from_the_tail():
    model = random_model("gpt2", 300)
    long_prompt = list(range(1, 2 * BLOCK))  # longer than the context: only its tail is seen
    for prompt in ([7], long_prompt):
        assert greedy(model, prompt, 3 * BLOCK) == greedy_reference(model, prompt, 3 * BLOCK)


def record_forward_calls(model: GPT, monkeypatch) -> list[tuple[int, int]]:
    """(tokens run, position of the first) of every pass the model makes through the KV cache from now on."""
    calls, hidden_states = [], model.hidden_states

    def recording(idx, cache=None):
        if cache is not None:
            calls.append((idx.size(1), int(cache.pos[0, 0])))
        return hidden_states(idx, cache)

    monkeypatch.setattr(model, "hidden_states", recording)
    return calls


def test_llama_generation_past_the_context_slides_the_cache(monkeypatch):
    model = random_model("llama", 300)
    calls = record_forward_calls(model, monkeypatch)
    for prompt in ([7], list(range(1, 2 * BLOCK))):
        calls.clear()
        ours = greedy(model, prompt, 3 * BLOCK)
        assert len(ours) == 3 * BLOCK and len(set(ours)) > 5
        prefill = min(len(prompt), BLOCK) - 1  # the prompt's one prefill (its last token decodes) ...
        assert calls[0] == ((prefill, 0) if prefill else (1, 0))
        assert all(T == 1 for T, _ in calls[1:])  # ... then one token a step, never a re-prefill
        assert max(T + start for T, start in calls) == BLOCK  # the cache never holds more than the context
    # until the cache first fills, this is plain cached decoding
    assert greedy(model, [7], 3 * BLOCK)[:BLOCK] == greedy_reference(model, [7], BLOCK)


def test_llama_sampling_past_the_context_is_reproducible():
    model = random_model("llama", 300)

    def sample(seed: int) -> list[int]:
        return list(generate_ids(model, [7], max_new_tokens=3 * BLOCK, temperature=1.0, seed=seed))

    first = sample(1)
    assert sample(1) == first and sample(2) != first


def test_generation_runs_in_eval_mode_and_leaves_the_model_in_its_own():
    model = random_model("gpt2", 300, dropout=0.5).train()
    steps = generate_ids(model, [1, 2], max_new_tokens=100, temperature=0)
    first = next(steps)
    assert model.training  # between steps too: a trainer may sample between its own
    steps.close()
    assert model.training
    assert first == greedy(model.eval(), [1, 2], 1)[0]  # no dropout while generating


def test_top_k_1_and_tiny_top_p_equal_greedy():
    model = random_model("llama", 300)
    expected = greedy(model, [3], 50)
    for options in ({"top_k": 1}, {"top_p": 1e-6}):
        ids = generate_ids(model, [3], max_new_tokens=50, temperature=1.5, seed=0, **options)
        assert list(ids) == expected, options


def test_sampling_values_are_checked_once_whatever_the_entry():
    model = random_model("gpt2", 300)
    with pytest.raises(TinyGPTError, match="temperature"):
        next(generate_ids(model, [1], max_new_tokens=5, temperature=float("nan")))
    with pytest.raises(TinyGPTError, match="not both"):
        next(generate_ids(model, [1], SamplingParams(), temperature=0))


# ---------------------------------------------------------------- text


@pytest.mark.parametrize("kind, vocab_size", [("bpe", 300), ("sentencepiece", 400), ("char", 0)])
def test_streamed_pieces_never_split_a_character(stories, kind, vocab_size):
    # char must see the characters to have ids for them; the byte-level kinds must not, so that they split them
    tokenizer = train_tokenizer(kind, [*stories, UNICODE_TEXT] if kind == "char" else stories, vocab_size)
    ids = tokenizer.encode(UNICODE_TEXT)
    assert kind == "char" or any("\ufffd" in tokenizer.decode([i]) for i in ids)
    stream = TextStream(tokenizer)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert not any("\ufffd" in p for p in pieces)
    assert "".join(pieces) == UNICODE_TEXT


def test_seeded_sampling_is_reproducible(bpe):
    sampler = Sampler(random_model("gpt2", bpe.vocab_size), bpe)
    options = {"max_new_tokens": 80, "temperature": 1.0, "top_k": 50, "stop_at_eot": False}
    first = sampler.generate("Once upon a time", seed=7, **options)
    assert sampler.generate("Once upon a time", seed=7, **options) == first
    assert sampler.generate("Once upon a time", seed=8, **options) != first
    assert "".join(sampler.stream("Once upon a time", seed=7, **options)) == first


def test_prompt_line_endings_are_read_as_documents_are(bpe):
    sampler = Sampler(random_model("gpt2", bpe.vocab_size), bpe)
    assert sampler.encode("Once\r\nupon\ra time\n") == sampler.encode("Once\nupon\na time\n")


def test_end_of_text_stops_unless_told_otherwise(bpe):
    model = random_model("gpt2", bpe.vocab_size, bias_head=True)
    with torch.no_grad():
        model.lm_head.bias[bpe.eot_id] = 1e4  # the model can only say <|endoftext|>
    sampler = Sampler(model, bpe)
    assert sampler.generate("The end.", max_new_tokens=5) == ""
    assert sampler.generate("The end.", max_new_tokens=2, stop_at_eot=False) == "<|endoftext|>\n" * 2


# ---------------------------------------------------------------- `tinygpt sample`


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, bpe, stories):
    """A run folder holding one complete checkpoint of a random gpt2 model, and a char-tokenizer one."""
    root = tmp_path_factory.mktemp("sample")
    for name, tokenizer in (("run", bpe), ("char-run", train_tokenizer("char", stories, 0))):
        model = random_model("gpt2", tokenizer.vocab_size)
        tokenizer.save(root / name / "tokenizer-src")
        config = dump_toml(Config(model=model.cfg))
        state = {"model": model.state_dict(), "progress": {"step": 10}}
        save_checkpoint(Run(root / name).step_folder(10), state, config, root / name / "tokenizer-src")
    return root / "run"


@pytest.fixture
def stdin(monkeypatch):
    """Standard input as a pipe holding the given text (pytest's own refuses to be read)."""

    def pipe(text: str) -> None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(text))

    pipe("")
    return pipe


def sample(capsys, *args) -> tuple[int, str, str]:
    """`tinygpt sample ...` in this process: exit status, stdout, stderr."""
    code = main(["sample", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_prompt_then_reproducible_continuation(run_dir, capsys, stdin):
    def run(seed: int, *more) -> str:
        code, out, err = sample(capsys, run_dir, "-p", "Once upon a time", "-n", 40, "--seed", seed, "--no-stop", *more)
        assert code == 0 and err == ""
        return out

    out = run(3)
    assert out.startswith("Once upon a time") and len(out) > len("Once upon a time") + 10
    assert run(3) == out
    assert run(3, "--num-samples", 2).split("---\n") == [out, run(4)]


def test_cli_tiny_temperatures_are_greedy(run_dir, capsys, stdin):
    """Before, --temperature 1e-300 drew an id past the vocabulary: an IndexError traceback."""
    outs = {sample(capsys, run_dir, "-p", "Once", "-n", 30, "--no-stop", "-t", t)[1] for t in ("0", "1e-300", "5e-5")}
    assert len(outs) == 1


def test_prompts_follow_the_end_of_text_token(bpe):
    sampler = Sampler(random_model("gpt2", bpe.vocab_size), bpe)
    assert sampler.encode("Once upon") == [bpe.eot_id, *bpe.encode("Once upon")]
    assert sampler.encode("") == [bpe.eot_id]  # a new story


def test_cli_reads_the_prompt_from_standard_input(run_dir, capsys, stdin):
    stdin("Tom and Sue\n")
    code, out, _ = sample(capsys, str(run_dir), "-n", "5", "--seed", "1", "--no-stop")
    assert code == 0 and out.startswith("Tom and Sue") and not out.startswith("Tom and Sue\n")


def test_cli_keeps_the_tail_of_a_long_prompt_with_a_warning(run_dir, capsys, stdin):
    code, out, err = sample(capsys, str(run_dir), "--prompt", "Once upon a time " * 20, "-n", "5", "--no-stop")
    assert code == 0 and out.startswith("Once upon a time")
    assert err.count("\n") == 1 and "warning" in err and f"last {BLOCK}" in err


def _broken_checkpoint(run_dir, tmp_path, damage: str):
    folder = tmp_path / "step-0000000010"
    shutil.copytree(Run(run_dir).step_folder(10), folder)
    if damage == "incomplete":
        (folder / MARKER).unlink()
    else:
        state = json.loads((folder / STATE).read_text())
        (folder / STATE).write_text(json.dumps({**state, "format_version": 999}))
    return folder


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda run, tmp: [run, "--temperature", "-1"], "--temperature"),
        (lambda run, tmp: [run, "--top-p", "0"], "--top-p"),
        (lambda run, tmp: [run, "--top-k", "0"], "--top-k"),
        (lambda run, tmp: [run, "--max-new-tokens", "-1"], "--max-new-tokens"),
        (lambda run, tmp: [run, "--temperature", "inf"], "--temperature"),
        (lambda run, tmp: [run, "--temperature", "nan"], "--temperature"),
        (lambda run, tmp: [run, "--seed", "-1"], "--seed"),
        (lambda run, tmp: [run, "--seed", str(2**63)], "--seed"),
        (lambda run, tmp: [run, "--seed", str(2**63 - 1), "--num-samples", "2"], "--seed"),
        (lambda run, tmp: [run, "--num-samples", "0"], "--num-samples"),
        (lambda run, tmp: [run, "--threads", "-1"], "--threads"),
        (lambda run, tmp: [run, "--device", "tpu"], "device"),
        (lambda run, tmp: [tmp / "nowhere"], "not a run or checkpoint folder"),
        (lambda run, tmp: [_broken_checkpoint(run, tmp, "incomplete")], "incomplete"),
        (lambda run, tmp: [_broken_checkpoint(run, tmp, "version")], "format"),
        (lambda run, tmp: [run.parent / "char-run", "--prompt", "Lily 🐉"], "U+1F409"),
    ],
)
def test_cli_bad_input_is_a_one_line_error(run_dir, tmp_path, capsys, stdin, make_args, message):
    code, out, err = sample(capsys, *make_args(run_dir, tmp_path))
    assert code != 0 and out == ""
    assert err.count("\n") == 1 and message in err, err


def test_cli_streams_through_a_pipe_and_stops_quietly_when_it_closes(run_dir):
    """The first bytes arrive while generation is still running; closing the pipe early
    (as `| head -c 10` does) ends the command with status 0 and nothing on stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinygpt", "sample", str(run_dir), "-n", "1000000", "--no-stop"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        first = proc.stdout.read(10)
        assert len(first) == 10 and proc.poll() is None
        proc.stdout.close()
        assert proc.wait(timeout=60) == 0
        assert proc.stderr.read() == b""
    finally:
        proc.kill()
