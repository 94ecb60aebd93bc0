"""`tinygpt inspect` and tinygpt.analysis: surprisal that adds up to `tinygpt eval`'s bits, attention
weights checked against the model's own attention output and against transformers, the logit lens,
embedding neighbours, two-checkpoint comparison, the CLI's views and errors, and POST /v1/inspect."""

from __future__ import annotations

import io
import json
import math
import shutil

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import one_line
from tinygpt.analysis import (
    Inspector,
    attention_maps,
    compare,
    file_ids,
    forward_internals,
    logit_lens,
    nearest_tokens,
    position_detail,
    unit_embeddings,
)
from tinygpt.analysis_view import BANDS, mark_tokens, use_colour
from tinygpt.checkpoint import save_checkpoint
from tinygpt.cli import main
from tinygpt.common import TinyGPTError
from tinygpt.config import Config, ModelConfig, TokenizerConfig, dump_toml, load_config
from tinygpt.evaluate import evaluate_path
from tinygpt.model import GPT
from tinygpt.run import Run
from tinygpt.tokenizers import train_tokenizer
from tinygpt.train import Trainer

TEXT = "Once upon a time, there was a little girl named Lily. She loved to play."
SMALL = {
    "model.family": "llama",
    "model.n_layer": "2",
    "model.n_head": "4",
    "model.n_kv_head": "2",  # grouped-query attention
    "model.n_embd": "32",
    "model.block_size": "64",
    "tokenizer.kind": "bpe",
    "train.batch_size": "8",
    "train.max_iters": "30",
    "train.ckpt_interval": "15",
    "train.eval_interval": "15",
    "train.eval_windows": "8",
    "train.threads": "1",
    "train.sample_tokens": "0",
}
CORPUS = ["Once upon a time, a little fox found a red ball.", "The cat sat on the warm mat. They played all day!"]


@pytest.fixture(scope="module")
def run(bpe_data, tmp_path_factory):
    """A 2-layer llama with grouped-query attention, 30 steps on the BPE data: checkpoints at 15 and 30."""
    run = tmp_path_factory.mktemp("inspect") / "run"
    Trainer(load_config("tiny", SMALL), bpe_data, run).fit()
    return run


@pytest.fixture(scope="module")
def inspector(run) -> Inspector:
    return Inspector.from_path(run, "cpu")


def sharp(cfg: ModelConfig) -> GPT:
    """A random model with large weights: peaked attention, so that wrong weights could not pass for right."""
    torch.manual_seed(0)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.35)
    return model.eval()


def char_checkpoint(folder, **model) -> None:
    tokenizer = train_tokenizer("char", CORPUS, 0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16, **model)
    tokenizer.save(folder / "tokenizer")
    save_checkpoint(folder, {"model": GPT(cfg).state_dict(), "progress": {"step": 1}},
                    dump_toml(Config(model=cfg, tokenizer=TokenizerConfig(kind="char"))), folder / "tokenizer")


# ---------------------------------------------------------------- surprisal and bits


def test_every_token_of_a_text_is_scored_after_end_of_text(inspector):
    ids = inspector.encode(TEXT)
    tokenizer = inspector.tokenizer
    assert ids[0] == tokenizer.eot_id and ids[1:].tolist() == tokenizer.encode(TEXT)
    scores = inspector.score(ids, top_k=5)
    assert scores.bits.size == ids.size - 1 and scores.n_bytes == len(TEXT.encode())  # the first token is scored too

    # The same numbers spelled out from the model's logits, one position at a time.
    logits, _ = inspector.model(torch.from_numpy(ids[:-1]).unsqueeze(0))
    probs = logits[0].double().softmax(-1)
    for i in (0, 7, ids.size - 2):
        target = int(ids[i + 1])
        p = probs[i, target].item()
        assert scores.prob[i] == pytest.approx(p, rel=1e-5)
        assert scores.bits[i] == pytest.approx(-math.log2(p), rel=1e-5)
        assert scores.rank[i] == 1 + int((probs[i] > p).sum())
        assert scores.entropy[i] == pytest.approx(-(probs[i] * probs[i].log2()).sum().item(), rel=1e-5)
        assert scores.top_ids[i].tolist() == probs[i].topk(5).indices.tolist()
    assert scores.bpb == pytest.approx(scores.bits.sum() / len(TEXT.encode()))


def test_file_bits_equal_eval_bits(run, inspector, text_files):
    _, valid = text_files  # ~40 KB of stories: hundreds of windows of 32 tokens
    with file_ids(inspector, valid) as (ids, _):
        scores = inspector.score(ids)
    result = evaluate_path(str(run), str(valid), device="cpu")
    assert scores.windows > 100 and scores.bits.size == result["tokens"] and scores.n_bytes == result["bytes"]
    assert scores.total_bits == pytest.approx(result["bits"], rel=1e-6)
    assert scores.bpb == pytest.approx(result["bpb"], rel=1e-6)


def test_a_file_with_crlf_and_a_byte_order_mark_has_eval_bits_per_byte(run, inspector, tmp_path, capsys):
    """inspect --file divides by the file's size as eval does (a BOM and each \\r count), and a text with
    \\r\\n line endings is read as the same text with \\n, as documents and prompts are."""
    path = tmp_path / "story.txt"
    path.write_bytes(b"\xef\xbb\xbf" + TEXT.replace(". ", ".\r\n").encode() + b"\r\n<|endoftext|>\r\nThe end.\r\n")
    result = evaluate_path(str(run), str(path), device="cpu")
    assert main(["inspect", str(run), "--file", str(path), "--json", "--device", "cpu"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["bytes"] == result["bytes"] == path.stat().st_size
    assert answer["bpb"] == pytest.approx(result["bpb"], rel=1e-5)
    crlf, lf = TEXT.replace(". ", ".\r\n"), TEXT.replace(". ", ".\n")
    assert inspector.encode(crlf).tolist() == inspector.encode(lf).tolist()


def test_cli_reads_a_file_as_eval_does_with_its_reading_options(run, tinygpt_command, tmp_path):
    """--errors and --text-field mean in inspect what they mean in eval: same tokens, same bits."""
    records = tmp_path / "stories.jsonl"
    records.write_bytes(b'{"story": "Once upon a time, a fox \\ud800 ran."}\n{"story": "The end."}\n')
    flags = ["--errors", "replace", "--text-field", "story"]
    results = tinygpt_command.run_all({
        "inspect": ["inspect", run, "--file", records, "--json", *flags],
        "eval": ["eval", run, "--data", records, "--json", "--device", "cpu", *flags],
        "strict": ["inspect", run, "--file", records, "--text-field", "story"],
        "field": ["inspect", run, "--file", records],
    })
    assert results["inspect"].returncode == 0 and results["eval"].returncode == 0, results
    shown, measured = json.loads(results["inspect"].stdout), json.loads(results["eval"].stdout)
    assert shown["n_tokens"] == measured["tokens"]
    assert shown["bits"] == pytest.approx(measured["bits"], rel=1e-6)
    assert "lone surrogate U+D800" in one_line(results["strict"].stderr) and results["strict"].returncode == 2
    assert "has no text field 'text'" in one_line(results["field"].stderr) and results["field"].returncode == 2


def test_a_long_text_goes_in_windows_that_start_afresh(inspector):
    text = " ".join([TEXT] * 4)
    ids = inspector.encode(text)
    scores = inspector.score(ids)
    T = inspector.model.cfg.block_size
    assert scores.windows == math.ceil((ids.size - 1) / T) > 1
    # the second window's first target is predicted from its own first token alone
    logits, _ = inspector.model(torch.from_numpy(ids[T : T + 1]).unsqueeze(0))
    alone = -F.log_softmax(logits[0, 0].double(), -1)[int(ids[T + 1])].item() / math.log(2)
    assert scores.bits[T] == pytest.approx(alone, rel=1e-5)


def test_bad_texts_are_refused_in_one_line(inspector, tmp_path):
    with pytest.raises(TinyGPTError, match="empty"):
        inspector.encode("")
    with pytest.raises(TinyGPTError, match="at most 5"):
        inspector.encode(TEXT, limit=5)
    char_checkpoint(tmp_path / "char")
    with pytest.raises(TinyGPTError, match="'☃'"):
        Inspector.from_path(tmp_path / "char", "cpu").encode("a snowman ☃")


# ---------------------------------------------------------------- attention


MODELS = {
    "gpt2": {"family": "gpt2"},
    "llama-gqa": {"family": "llama", "n_kv_head": 2},
}


@pytest.mark.parametrize("name", MODELS)
def test_attention_weights_reproduce_the_models_attention_output(name):
    cfg = ModelConfig(vocab_size=50, block_size=24, n_layer=2, n_head=4, n_embd=32, **MODELS[name])
    model = sharp(cfg)
    ids = torch.randint(0, 50, (24,), generator=torch.Generator().manual_seed(1))
    maps = attention_maps(model, ids)
    assert maps.shape == (2, 4, 24, 24)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 4, 24))
    assert maps.triu(diagonal=1).abs().max() == 0  # causal
    assert maps.max() > 0.9  # peaked: uniform weights would not test anything

    # What each layer's scaled_dot_product_attention produced: the input of its output projection.
    seen, values = [], []
    attns = [m for m in model.modules() if hasattr(m, "split_heads")]
    hooks = [(a.c_proj if name == "gpt2" else a.o_proj).register_forward_pre_hook(lambda m, args: seen.append(args[0])) for a in attns]
    hooks += [a.register_forward_pre_hook(lambda m, args: values.append(m.qkv(args[0]))) for a in attns]
    with torch.no_grad():
        model(ids.unsqueeze(0))
    for h in hooks:
        h.remove()
    for layer, attn in enumerate(attns):
        v = attn.split_heads(values[layer])[2].repeat_interleave(attn.n_head // attn.n_kv_head, dim=1)  # (1, nh, T, hs)
        ours = (maps[layer].unsqueeze(0) @ v).transpose(1, 2).reshape(1, 24, -1)
        torch.testing.assert_close(ours, seen[layer], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_attention_weights_equal_transformers_eager_attentions(name, tmp_path):
    transformers = pytest.importorskip("transformers")
    from tinygpt.export import export_hf

    tokenizer = train_tokenizer("char", CORPUS, 0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=24, n_layer=2, n_head=4, n_embd=32, **MODELS[name])
    model = sharp(cfg)
    out = export_hf(model, cfg, tokenizer, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    ids = torch.tensor(tokenizer.encode(CORPUS[0][:24]))
    with torch.no_grad():
        theirs = torch.stack(hf(ids.unsqueeze(0), output_attentions=True).attentions)[:, 0]  # (n_layer, n_head, T, T)
    torch.testing.assert_close(attention_maps(model, ids), theirs, atol=1e-5, rtol=1e-4)


def test_inspecting_leaves_no_hooks_and_the_same_logits(inspector):
    model = inspector.model
    ids = torch.from_numpy(inspector.encode(TEXT)[:32])
    before = model(ids.unsqueeze(0))[0]
    forward_internals(model, ids, attention=True)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch.equal(model(ids.unsqueeze(0))[0], before)


# ---------------------------------------------------------------- logit lens and one position


def test_the_last_layers_lens_is_the_models_own_logits(inspector):
    ids = torch.from_numpy(inspector.encode(TEXT)[:32])
    inside = forward_internals(inspector.model, ids)
    assert inside.hidden.shape == (2, 32, 32)
    assert torch.equal(logit_lens(inspector.model, inside.hidden[-1]), inside.logits)
    scores = inspector.score(inspector.encode(TEXT), lens=True, lens_top=True)
    assert (scores.lens_rank[:, -1] == scores.rank).all()
    assert np.array_equal(scores.lens_top_ids[:, -1], scores.top_ids)
    assert not (scores.lens_rank[:, 0] == scores.rank).all()  # the first layer knows less


def test_position_detail_is_the_row_of_the_full_maps(inspector):
    ids = inspector.encode(" ".join([TEXT] * 2))
    T = inspector.model.cfg.block_size
    detail = position_detail(inspector.model, ids, 10)  # target 10 sits at sequence position 11
    maps = attention_maps(inspector.model, ids[:T])
    assert detail.key_start == 0
    torch.testing.assert_close(detail.attention, maps[:, :, 11, :12])
    scores = inspector.score(ids, lens=True)
    assert detail.lens_top_ids[-1].tolist() == scores.top_ids[11].tolist()  # the lens there predicts target 11
    assert detail.next_rank.tolist() == scores.lens_rank[11].tolist()

    later = position_detail(inspector.model, ids, T + 3)  # in the second window: keys from position T on
    assert later.key_start == T and later.attention.shape == (2, 4, 5)
    last = position_detail(inspector.model, ids, ids.size - 2)
    assert last.next_rank is None  # nothing came after the text
    with pytest.raises(TinyGPTError, match="position must be in"):
        position_detail(inspector.model, ids, ids.size - 1)


def test_position_json_names_keys_and_obeys_layer_and_head(inspector):
    ids = inspector.encode(TEXT)
    detail = inspector.position_json(ids, 4, layer=1, head=2)
    assert detail["keys"][0]["text"].startswith("<|endoftext|>") and len(detail["keys"]) == 6
    assert detail["layers"] == [1] and detail["heads"] == [2] and len(detail["attention"][0][0]) == 6
    for field, kwargs in (("layer", {"layer": 2}), ("head", {"head": -1})):
        with pytest.raises(TinyGPTError, match=field):
            inspector.position_json(ids, 4, **kwargs)


# ---------------------------------------------------------------- embeddings and comparison


@pytest.mark.parametrize("tie", [True, False])
def test_nearest_tokens_by_cosine(tie):
    model = sharp(ModelConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=16, tie_weights=tie))
    with torch.no_grad():
        wte = model.transformer.wte.weight
        wte[7] = 3 * wte[3] + 0.01 * torch.randn(16)  # same direction, another length
        model.lm_head.weight[9] = -model.lm_head.weight[5] if not tie else model.lm_head.weight[9]
    near = nearest_tokens(unit_embeddings(model), 3, k=4)
    assert near["input"][0][0] == 7 and near["input"][0][1] > 0.999
    assert 3 not in [t for t, _ in near["input"]] and len(near["input"]) == 4
    assert ("output" in near) == (not tie)
    if not tie:
        assert nearest_tokens(unit_embeddings(model), 5, k=39)["output"][-1] == (9, pytest.approx(-1.0))
    with pytest.raises(TinyGPTError, match="token id"):
        nearest_tokens(unit_embeddings(model), 40)


def test_compare_shows_what_the_later_checkpoint_learned(run, bpe_data):
    early = Inspector.from_path(Run(run).step_folder(15), "cpu")
    late = Inspector.from_path(Run(run).step_folder(30), "cpu")
    ids = late.encode(TEXT)
    found = compare(early, late, ids)
    assert np.allclose(found["delta"], found["later"].bits - found["earlier"].bits)
    assert found["later"].bpb < found["earlier"].bpb  # 15 more steps on stories: better at a story
    other = Inspector(early.model, train_tokenizer("bpe", CORPUS * 20, early.tokenizer.vocab_size))
    with pytest.raises(TinyGPTError, match="different tokenizers"):
        compare(other, late, ids)


# ---------------------------------------------------------------- the command line


def test_marks_are_colours_on_a_terminal_and_brackets_elsewhere(monkeypatch):
    pieces = [{"id": 1, "text": "Once"}, {"id": 2, "text": " upon"}, {"id": 3, "bytes": "e2 80"}]
    bits = np.array([0.5, 12.0, 3.0])
    coloured = mark_tokens(pieces, bits, BANDS, 10.0, colour=True)
    assert coloured.startswith("Once\x1b[30;48;5;203m upon\x1b[0m\x1b[30;48;5;229m‹e2 80›")
    assert mark_tokens(pieces, bits, BANDS, 10.0, colour=False) == "Once [upon 12.0]‹e2 80›"

    class Terminal:
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_colour(Terminal())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_colour(Terminal())


def test_cli_views(run, text_files, tinygpt_command, tmp_path):
    _, valid = text_files
    results = tinygpt_command.run_all({
        "text": ["inspect", run, "--text", TEXT, "--lens", "--position", "3"],
        "json": ["inspect", run, "--text", TEXT, "--json", "--attention-png", tmp_path / "png", "--nearest", "."],
        "file": ["inspect", run, "--file", valid, "--json"],
        "compare": ["inspect", run, "--text", TEXT, "--compare", Run(run).step_folder(15)],
    })
    for name, result in results.items():
        assert result.returncode == 0, f"{name}: {result.stderr}"
    text = results["text"].stdout
    assert "\x1b[" not in text  # not a terminal: plain
    assert "one window (context 64)" in text and "most surprising tokens" in text and "bits per byte over 72 bytes" in text
    assert "logit lens" in text and "layer 1 (output)" in text and "token #3" in text and "layer 1 head 3" in text

    result = json.loads(results["json"].stdout)
    assert result["n_tokens"] == len(result["tokens"]) and result["bytes"] == len(TEXT.encode())
    assert {"id", "text", "prob", "bits", "rank", "entropy", "top", "lens"} <= set(result["tokens"][0])
    assert len(result["tokens"][0]["lens"]) == 2 and len(result["attention_png"]) == 2
    assert all((tmp_path / "png" / f"attention-layer-{i:02d}.png").stat().st_size > 1000 for i in range(2))
    assert len(result["nearest"]["input"]) == 10

    eval_bits = evaluate_path(str(run), str(valid), device="cpu")["bits"]
    assert json.loads(results["file"].stdout)["bits"] == pytest.approx(eval_bits, rel=1e-6)
    assert "step 15" in results["compare"].stdout and "learned most" in results["compare"].stdout


def test_cli_errors_are_one_line(run, tinygpt_command, tmp_path):
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(run / "best", no_tokenizer)
    shutil.rmtree(no_tokenizer / "tokenizer")
    char_checkpoint(tmp_path / "char")
    cases = {
        "empty": (["inspect", run, "--text", ""], "the text is empty"),
        "position": (["inspect", run, "--text", ".", "--position", "1"], "position must be in [0, 0] for a text of 1 token"),
        "layer": (["inspect", run, "--text", ".", "--position", "0", "--layer", "2"], "layer must be in [0, 1]"),
        "head": (["inspect", run, "--text", ".", "--position", "0", "--head", "4"], "head must be in [0, 3]"),
        "no_tokenizer": (["inspect", no_tokenizer, "--text", "Once"], "no tokenizer"),
        "unseen": (["inspect", tmp_path / "char", "--text", "a snowman ☃"], "'☃' (U+2603)"),
        "nearest": (["inspect", run, "--nearest", "Once upon a time"], "--nearest takes one token"),
        "nearest_unseen": (["inspect", tmp_path / "char", "--nearest", "☃"], "the --nearest token has character '☃'"),
    }
    results = tinygpt_command.run_all({name: args for name, (args, _) in cases.items()})
    for name, (_, message) in cases.items():
        result = results[name]
        assert result.returncode == 2, f"{name}: {result.stdout} {result.stderr}"
        assert result.stderr.startswith("tinygpt inspect: error: ") and result.stderr.count("\n") == 1, result.stderr
        assert message in result.stderr, (name, result.stderr)


def test_cli_shows_a_files_first_token_and_refuses_odd_paths_up_front(run, inspector, tinygpt_command, tmp_path, monkeypatch, capsys):
    story = tmp_path / "story.txt"
    story.write_text("Once upon a time, there was a fox.\n", encoding="utf-8")
    (tmp_path / "a-file").write_text("not a folder")
    results = tinygpt_command.run_all({
        "file": ["inspect", run, "--file", story, "--position", "0"],
        "empty_file": ["inspect", run, "--file", ""],
        "empty_compare": ["inspect", run, "--text", ".", "--compare", ""],
        "png_is_a_file": ["inspect", run, "--text", ".", "--attention-png", tmp_path / "a-file"],
    })
    shown = results["file"].stdout
    assert results["file"].returncode == 0, results["file"].stderr
    first = inspector.tokenizer.decode(inspector.tokenizer.encode("Once")[:1])
    n_tokens = len(inspector.tokenizer.encode(story.read_text(encoding="utf-8")))
    assert shown.splitlines()[2].startswith(first)  # the file's first token is scored, after the end-of-text token
    assert f"{n_tokens} tokens in one window" in shown and f"{n_tokens} tokens, " in shown
    assert f'token #0 "{first}"' in shown and "start" in shown  # attention from the first token reaches the start
    for name, message in {"empty_file": "--file is empty", "empty_compare": "--compare is empty",
                          "png_is_a_file": "a-file is a file: give a folder"}.items():  # fmt: skip
        result = results[name]
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, (name, result.stderr)

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"Once \xff upon")))
    assert main(["inspect", str(run)]) == 2
    assert capsys.readouterr().err == "tinygpt inspect: error: the text on standard input is not UTF-8: byte 0xff at offset 5\n"
