"""GGUF and Ollama export, checked by llama.cpp itself through llama-cpp-python: the same token ids,
logits and greedy text as tinygpt, every metadata key read back with the gguf package, and bad input
refused in one line with nothing left behind.

The models are tiny runs of the `tiny` preset trained on TinyStories by the real `tinygpt train`,
long enough that attention matters: llama.cpp's rotary layout without the q/k permutation
changes their logits by about 2, which the tolerances below would catch many times over.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import gguf
import llama_cpp
import numpy as np
import pytest
import torch

from tinygpt import gguf_export
from tinygpt.cli import main
from tinygpt.common import TinyGPTError, atomic_write_bytes
from tinygpt.config import ModelConfig
from tinygpt.export import CardInfo
from tinygpt.generate import generate_ids
from tinygpt.model import FAMILIES, GPT
from tinygpt.run import load_model
from tinygpt.tokenizers import EOT_TEXT, CharTokenizer, SentencePieceTokenizer

# family-tokenizer -> config overrides: between them every layout the exporter writes
RUNS = {
    "llama-sentencepiece": {},
    # grouped-query attention, heads wider than n_embd / n_head (key_length), an untied output layer,
    # and matrices whose rows (80, 48) are not a multiple of 32 (f16 in a q8_0 file)
    "llama-bpe": {"model.n_kv_head": "1", "model.head_size": "24", "model.mlp_hidden": "80",
                  "model.tie_weights": "false"},
    "gpt2-bpe": {},
    # absent biases are written as zeros; an untied output layer
    "gpt2-sentencepiece": {"model.bias_qkv": "false", "model.bias_mlp": "false", "model.tie_weights": "false"},
}  # fmt: skip

# Largest |logit difference| allowed, over three full windows of block_size tokens, on logits of
# magnitude 6 to 9. Measured (November 2026, llama-cpp-python 0.3.36, the runs above): f32 with
# an f32 KV cache 2.9e-6 (llama) and 8.7e-4 (gpt2: ggml's CPU GELU reads a half-precision table);
# f16 files with llama.cpp's default f16 KV cache 4.8e-3; q8_0 0.082. The tolerances are about
# three times those; llama f32's is a round 1e-4.
TOLERANCE = {("llama", "f32"): 1e-4, ("gpt2", "f32"): 3e-3, "f16": 1.5e-2, "q8_0": 0.25}
PROMPTS = ["Once upon a time, there was a", "Lily and Tom went to the park. They saw a big", "The cat"]


@pytest.fixture(scope="session")
def gguf_runs(tmp_path_factory, sentencepiece_data, bpe_data) -> dict:
    """name -> a run folder, trained for 150 steps by `tinygpt train` (a few seconds each)."""
    data = {"sentencepiece": sentencepiece_data, "bpe": bpe_data}
    runs = {}
    for name, overrides in RUNS.items():
        family, kind = name.split("-")
        run = tmp_path_factory.mktemp("gguf-runs") / name
        settings = {"model.family": family, "train.max_iters": "150", "train.batch_size": "8", "train.lr": "1e-2",
                    "train.eval_interval": "150", "train.eval_windows": "8", "train.threads": "1",
                    "train.sample_tokens": "0", **overrides}  # fmt: skip
        args = ["train", "--data", str(data[kind]), "--out", str(run), "--config", "tiny"]
        assert main(args + [arg for key, value in settings.items() for arg in (f"--{key}", value)]) == 0
        runs[name] = run
    return runs


@pytest.fixture(scope="session")
def gguf_files(gguf_runs, tmp_path_factory) -> dict:
    """(run name, dtype) -> the .gguf file `tinygpt export --format gguf` wrote."""
    out = tmp_path_factory.mktemp("gguf-files")
    files = {}
    for name, run in gguf_runs.items():
        for dtype in gguf_export.DTYPES:
            path = out / f"{name}-{dtype}.gguf"
            assert main(["export", str(run), str(path), "--format", "gguf", "--dtype", dtype, "--dataset", "tinystories"]) == 0
            files[name, dtype] = path
    return files


def llama_cpp_model(path, n_ctx: int, kv_dtype: str = "f16", **kwargs) -> llama_cpp.Llama:
    kv = {"f32": llama_cpp.GGML_TYPE_F32, "f16": llama_cpp.GGML_TYPE_F16}[kv_dtype]
    return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=1, type_k=kv, type_v=kv, verbose=False,
                           **kwargs)


def test_every_model_family_has_a_llama_cpp_architecture():
    assert set(gguf_export.GGUF_FAMILIES) == set(FAMILIES) == {name.split("-")[0] for name in RUNS}


@pytest.mark.parametrize("name", ["llama-sentencepiece", "gpt2-bpe"])
def test_llama_cpp_gives_our_token_ids(name, gguf_runs, gguf_files, valid_txt, parity_texts):
    _, tokenizer = load_model(gguf_runs[name])
    llm = llama_cpp_model(gguf_files[name, "f32"], 64, vocab_only=True)
    for text in [*parity_texts, valid_txt.read_text(encoding="utf-8")[:20_000]]:
        ids = tokenizer.encode(text)
        # special-token parsing off: a literal <|endoftext|> is text, as it is for tinygpt
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids, text[:60]
        # add_bos_token: llama.cpp starts every prompt after <|endoftext|>, as every training document did
        assert llm.tokenize(text.encode(), add_bos=True, special=False) == [tokenizer.eot_id, *ids]
        # the pieces llama.cpp streams while generating spell our text
        assert llm.detokenize(ids).decode() == tokenizer.decode(ids), text[:60]
    assert llm.token_bos() == llm.token_eos() == tokenizer.eot_id
    # README: runtimes that parse special tokens read the literal as end-of-text
    assert llm.tokenize(EOT_TEXT.encode(), add_bos=False, special=True) == [tokenizer.eot_id]


@pytest.mark.parametrize("dtype", gguf_export.DTYPES)
@pytest.mark.parametrize("name", RUNS)
def test_llama_cpp_gives_our_logits_and_greedy_text(name, dtype, gguf_runs, gguf_files, valid_txt):
    model, tokenizer = load_model(gguf_runs[name])
    cfg = model.cfg
    B = cfg.block_size
    tolerance = TOLERANCE.get((cfg.family, dtype), TOLERANCE.get(dtype))
    # f32 is exact only with an f32 KV cache (llama.cpp's -ctk f32 -ctv f32); the others use llama.cpp's default
    llm = llama_cpp_model(gguf_files[name, dtype], B, "f32" if dtype == "f32" else "f16", logits_all=True)

    ids = tokenizer.encode(valid_txt.read_text(encoding="utf-8")[:20_000])
    windows = [[tokenizer.eot_id, *ids[: B - 1]], ids[500 : 500 + B], ids[1500 : 1500 + B]]
    for window in windows:
        llm.reset()
        llm.eval(window)
        with torch.no_grad():
            ours = model(torch.tensor([window]))[0][0].numpy()
        diff = np.abs(np.asarray(llm.scores[:B]) - ours).max()
        assert diff <= tolerance, f"{name} {dtype}: logits differ by up to {diff:.2e}"

    if dtype == "q8_0":  # a 0.1 logit error can flip the argmax between near-equal tokens
        return
    for prompt in PROMPTS:
        prompt_ids = [tokenizer.eot_id, *tokenizer.encode(prompt)]
        new = B - len(prompt_ids)  # within the trained context
        ours = list(generate_ids(model, prompt_ids, max_new_tokens=new, temperature=0, stop_at_eot=False))
        ours = ours[: ours.index(tokenizer.eot_id) + 1] if tokenizer.eot_id in ours else ours
        llm.reset()
        theirs = []
        for token in llm.generate(prompt_ids, temp=0.0, repeat_penalty=1.0):
            theirs.append(token)
            if token == tokenizer.eot_id or len(theirs) == new:
                break
        # Compare up to the first step whose two best logits are closer than the dtype's error:
        # there either choice is right (measured: 2.2e-4 apart, f16 errors up to 6e-4).
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + ours[:-1]]))[0][0, len(prompt_ids) - 1 :]
        best_two = logits.topk(2).values
        near_ties = (best_two[:, 0] - best_two[:, 1] < tolerance).nonzero()
        n = int(near_ties[0]) if len(near_ties) else len(ours)
        assert theirs[:n] == ours[:n], prompt


def read_gguf(path) -> tuple[dict, dict]:
    """Every metadata key but the header's, and {tensor name: (type name, shape innermost first)}."""
    reader = gguf.GGUFReader(path)
    fields = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    tensors = {t.name: (t.tensor_type.name, [int(n) for n in t.shape]) for t in reader.tensors}
    return fields, tensors


FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}


@pytest.mark.parametrize("dtype", gguf_export.DTYPES)
@pytest.mark.parametrize("name", RUNS)
def test_every_metadata_key_and_tensor_reads_back(name, dtype, gguf_runs, gguf_files):
    model, tokenizer = load_model(gguf_runs[name])
    cfg = model.cfg
    fields, tensors = read_gguf(gguf_files[name, dtype])

    description = fields.pop("general.description")
    for fact in ("tinygpt", "TinyStories", "Eldan", "CDLA-Sharing-1.0", "150 steps", "Validation bits per byte"):
        assert fact in description, fact
    tokens, types = fields.pop("tokenizer.ggml.tokens"), fields.pop("tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == cfg.vocab_size
    assert tokens[tokenizer.eot_id] == EOT_TEXT and types[tokenizer.eot_id] == gguf.TokenType.CONTROL
    expected = {
        "general.architecture": cfg.family,
        "general.type": "model",
        "general.name": f"{name}-{dtype}",
        "general.license": "CDLA-Sharing-1.0",
        "general.dataset.count": 1,
        "general.dataset.0.name": "TinyStories",
        "general.dataset.0.repo_url": "https://huggingface.co/datasets/roneneldan/TinyStories",
        "general.file_type": FILE_TYPES[dtype],
        "general.quantization_version": gguf.GGML_QUANT_VERSION,
        f"{cfg.family}.vocab_size": cfg.vocab_size,
        f"{cfg.family}.context_length": 64,
        f"{cfg.family}.embedding_length": 32,
        f"{cfg.family}.block_count": 2,
        f"{cfg.family}.feed_forward_length": cfg.hidden_dim,
        f"{cfg.family}.attention.head_count": 2,
        "tokenizer.ggml.bos_token_id": tokenizer.eot_id,
        "tokenizer.ggml.eos_token_id": tokenizer.eot_id,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
    }
    if cfg.family == "llama":
        expected.update({
            "llama.attention.head_count_kv": cfg.kv_heads,
            "llama.rope.dimension_count": cfg.head_dim,
            "llama.rope.freq_base": 10000.0,
            "llama.attention.layer_norm_rms_epsilon": pytest.approx(1e-5),
        })
        if cfg.head_dim != 16:
            expected.update({"llama.attention.key_length": cfg.head_dim, "llama.attention.value_length": cfg.head_dim})
    else:
        expected["gpt2.attention.layer_norm_epsilon"] = pytest.approx(1e-5)
    if isinstance(tokenizer, SentencePieceTokenizer):
        sp = tokenizer._sp
        assert tokens == [sp.id_to_piece(i) for i in range(cfg.vocab_size)]
        assert types.count(gguf.TokenType.BYTE) == 256 and tokens[types.index(gguf.TokenType.BYTE)] == "<0x00>"
        assert types[sp.unk_id()] == gguf.TokenType.UNKNOWN
        assert types.count(gguf.TokenType.NORMAL) == cfg.vocab_size - 258
        expected.update({
            "tokenizer.ggml.model": "llama",
            "tokenizer.ggml.scores": pytest.approx([sp.get_score(i) for i in range(cfg.vocab_size)]),
            "tokenizer.ggml.unknown_token_id": sp.unk_id(),
            "tokenizer.ggml.add_space_prefix": False,
        })
    else:
        library = json.loads(tokenizer._tok.to_str())["model"]
        assert tokens[: tokenizer.eot_id] == sorted(library["vocab"], key=library["vocab"].get)
        assert types.count(gguf.TokenType.NORMAL) == cfg.vocab_size - 1
        expected.update({
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": "gpt-2",
            "tokenizer.ggml.merges": [" ".join(m) if isinstance(m, list) else m for m in library["merges"]],
        })
    assert fields == expected

    shapes = {tensor: shape for tensor, (_, shape) in tensors.items()}
    n_embd, V = cfg.n_embd, cfg.vocab_size
    assert shapes["token_embd.weight"] == [n_embd, V]
    assert ("output.weight" in shapes) == (not cfg.tie_weights)  # llama.cpp reuses token_embd when tied
    if cfg.family == "gpt2":
        assert shapes["position_embd.weight"] == [n_embd, 64]
        assert shapes["blk.1.attn_qkv.bias"] == [3 * n_embd]  # written as zeros when absent
        assert shapes["blk.1.ffn_down.weight"] == [cfg.hidden_dim, n_embd]
        assert len(shapes) == 4 + 12 * cfg.n_layer + (not cfg.tie_weights)
    else:
        assert shapes["blk.1.attn_k.weight"] == [n_embd, cfg.kv_heads * cfg.head_dim]
        assert shapes["blk.1.attn_output.weight"] == [cfg.n_head * cfg.head_dim, n_embd]
        assert len(shapes) == 2 + 9 * cfg.n_layer + (not cfg.tie_weights)
    for tensor, (kind, shape) in tensors.items():
        if len(shape) == 1 or dtype == "f32":  # norms and biases stay f32, as llama.cpp's converter writes them
            assert kind == "F32", tensor
        else:  # q8_0 holds rows of a multiple of 32 values (shape[0]: GGUF lists the row length first)
            assert kind == ("Q8_0" if dtype == "q8_0" and shape[0] % 32 == 0 else "F16"), tensor


def test_q8_0_summary_lists_the_matrices_written_f16(gguf_runs, tmp_path, capsys):
    """llama-bpe's attention output (rows of 2 heads x 24) and MLP down projection (rows of 80)."""
    out = tmp_path / "q8.gguf"
    assert main(["export", str(gguf_runs["llama-bpe"]), str(out), "--format", "gguf", "--dtype", "q8_0"]) == 0
    printed = capsys.readouterr().out
    assert "written f16 (rows not a multiple of 32, which q8_0 needs): blk.0.attn_output.weight, blk.0.ffn_down.weight, " \
           "blk.1.attn_output.weight, blk.1.ffn_down.weight\n" in printed
    assert f"wrote {out}: llama.cpp architecture llama, q8_0, 21 tensors" in printed
    assert "run it: llama-completion -m" in printed and "-c 64 --temp 0.8 --top-k 0 --top-p 1 --min-p 0" in printed


def test_ollama_folder_holds_the_model_and_a_modelfile(gguf_runs, tmp_path, capsys):
    out = tmp_path / "My Story Model"
    assert main(["export", str(gguf_runs["gpt2-bpe"]), str(out), "--format", "ollama", "--dtype", "f16"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "model.gguf"]
    assert (out / "Modelfile").read_text().splitlines()[1:] == [
        "FROM ./model.gguf",
        'TEMPLATE """{{ .Prompt }}"""',
        'PARAMETER stop "<|endoftext|>"',
        "PARAMETER num_ctx 64",  # the trained context, not Ollama's far longer default
        "PARAMETER temperature 0.8",
        "PARAMETER top_p 1",
        "PARAMETER top_k 0",
        "PARAMETER repeat_penalty 1",
    ]
    assert f"ollama create my-story-model -f {out / 'Modelfile'}" in capsys.readouterr().out
    llm = llama_cpp_model(out / "model.gguf", 64)
    assert llm.metadata["general.name"] == "My Story Model" and llm.metadata["gpt2.context_length"] == "64"
    assert main(["export", str(gguf_runs["gpt2-bpe"]), str(out), "--format", "ollama"]) == 2
    assert "is not empty" in capsys.readouterr().err


# ---------------------------------------------------------------- refusals


def tiny_model(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(**{"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 32, **overrides}))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"activation": "relu"}, "its MLP is always GELU, and this model's is relu"),
        ({"n_head": 6, "head_size": 64, "n_embd": 64}, "its heads are n_embd / n_head wide, but this model has 6 heads of 64"),
        ({"bias_head": True, "tie_weights": False}, "its output layer has no bias"),
    ],
)
def test_refuses_what_llama_cpps_gpt2_cannot_compute(overrides, message, gguf_runs, tmp_path):
    _, tokenizer = load_model(gguf_runs["gpt2-bpe"])
    model = tiny_model(family="gpt2", vocab_size=tokenizer.vocab_size, **overrides)
    with pytest.raises(TinyGPTError, match=f"cannot export to llama.cpp's gpt2 architecture: {message}"):
        gguf_export.export_gguf(model, model.cfg, tokenizer, tmp_path / "m.gguf", CardInfo())
    assert not any(tmp_path.iterdir())


def test_refuses_an_option_it_has_not_checked(gguf_runs, tmp_path, monkeypatch):
    """A model option added later (say by the quality work) is refused until the exporter has checked it."""
    monkeypatch.setattr(gguf_export, "CHECKED_FIELDS", gguf_export.CHECKED_FIELDS - {"rope_theta"})
    _, tokenizer = load_model(gguf_runs["llama-sentencepiece"])
    model = tiny_model(family="llama", vocab_size=tokenizer.vocab_size, rope_theta=500000.0)
    with pytest.raises(TinyGPTError, match="model.rope_theta = 500000.0 is not known to run the same in llama.cpp"):
        gguf_export.export_gguf(model, model.cfg, tokenizer, tmp_path / "m.gguf", CardInfo())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"family": "llama", "activation": "relu2"}, "llama.cpp's llama architecture: its MLP gate is always SiLU"),
        ({"family": "llama", "qk_norm": True}, "GGUF: model.qk_norm = True is not known to run the same in llama.cpp"),
        ({"family": "gpt2", "embed_skip": True}, "GGUF: model.embed_skip = True is not known to run the same in llama.cpp"),
    ],
)
def test_refuses_the_training_options_llama_cpp_does_not_compute(overrides, message):
    with pytest.raises(TinyGPTError, match=f"^cannot export to {message}"):
        gguf_export.check_exportable(ModelConfig(**overrides))
    assert gguf_export.check_exportable(ModelConfig(family="llama", zero_init_proj=True)).arch == "llama"


def test_refuses_a_char_tokenizer_because_llama_cpp_aborts_on_unknown_characters(tmp_path, monkeypatch):
    """The parity test that decides char: written as the SPM vocabulary the issue describes (one piece
    per character, space as "▁", no byte tokens), llama.cpp tokenizes known characters right but aborts
    the whole process on any other. When a llama.cpp release maps them to the unknown id instead, this
    test fails: then char can be exported."""
    tokenizer = CharTokenizer("Once upon a time.\n")
    model = tiny_model(family="llama", vocab_size=tokenizer.vocab_size)
    with pytest.raises(TinyGPTError, match="cannot export a char tokenizer to GGUF: .* would end the program running the model"):
        gguf_export.export_gguf(model, model.cfg, tokenizer, tmp_path / "char.gguf", CardInfo())
    assert not any(tmp_path.iterdir())

    pieces = [EOT_TEXT, "<unk>", *tokenizer.chars.replace(" ", "\u2581")]
    vocab = gguf_export.GGUFVocab("llama", pieces, [3, 2] + [1] * len(tokenizer.chars), [0.0] * len(pieces), unk_id=1)
    monkeypatch.setattr(gguf_export, "gguf_vocab", lambda _: vocab)
    gguf_export.export_gguf(model, model.cfg, tokenizer, tmp_path / "char.gguf", CardInfo())
    script = (
        "import sys, llama_cpp\n"
        "llm = llama_cpp.Llama(sys.argv[1], vocab_only=True, verbose=False)\n"
        "for text in sys.argv[2:]:\n"
        "    print(llm.tokenize(text.encode(), add_bos=False, special=False), flush=True)\n"
    )
    env = {**os.environ, "GGML_NO_BACKTRACE": "1"}  # no debugger backtrace on the abort
    result = subprocess.run([sys.executable, "-c", script, tmp_path / "char.gguf", "a time.", "a timé"],
                            capture_output=True, text=True, timeout=60, env=env, check=False)
    assert result.stdout.splitlines() == [str(tokenizer.encode("a time."))]  # known characters: our ids
    assert result.returncode < 0 and "out_of_range" in result.stderr  # the unknown é: SIGABRT, not <unk>


def test_bad_outputs_are_one_line_errors_and_leave_nothing(gguf_runs, tmp_path, capsys):
    run = str(gguf_runs["llama-sentencepiece"])
    cases = [
        ([str(tmp_path / "missing" / "m.gguf")], "folder .*missing does not exist: create it first"),
        ([str(tmp_path / "m.bin")], "a GGUF file's name ends in .gguf"),
        ([str(tmp_path / "m"), "--dtype", "f16", "--format", "hf"], "--dtype is for --format gguf and ollama"),
    ]
    (tmp_path / "notes.gguf").write_text("mine")
    cases.append(([str(tmp_path / "notes.gguf"), "--overwrite"], "refusing to replace .*notes.gguf: it is not a GGUF file"))
    assert main(["export", run, str(tmp_path / "m.gguf"), "--format", "gguf"]) == 0
    cases.append(([str(tmp_path / "m.gguf")], "m.gguf exists: choose a new name, or pass --overwrite"))
    capsys.readouterr()
    for args, message in cases:
        assert main(["export", run, *args] + ([] if "--format" in args else ["--format", "gguf"])) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("tinygpt export: error: "), err
        assert re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "notes.gguf"]
    assert main(["export", run, str(tmp_path / "m.gguf"), "--format", "gguf", "--overwrite", "--dtype", "q8_0"]) == 0
    assert read_gguf(tmp_path / "m.gguf")[0]["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0


def test_a_failed_write_leaves_no_file(gguf_runs, tmp_path, monkeypatch):
    model, tokenizer = load_model(gguf_runs["llama-sentencepiece"])

    def full_disk(self, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        gguf_export.export_gguf(model, model.cfg, tokenizer, tmp_path / "m.gguf", CardInfo())
    with pytest.raises(OSError, match="No space left"):
        gguf_export.export_ollama(model, model.cfg, tokenizer, tmp_path / "ollama", CardInfo())
    assert not any(tmp_path.iterdir())


def test_cli_refuses_the_seed_model_in_one_line(char_data, tmp_path, tinygpt_command):
    """The seed preset's model (ReLU, 6 heads of 64 on a 64-wide embedding, char tokens) through the real command."""
    settings = ["--train.max_iters", "1", "--train.eval_windows", "1", "--train.sample_tokens", "0", "--train.threads", "1"]
    assert main(["train", "--data", str(char_data), "--out", str(tmp_path / "seed"), "--config", "seed", *settings]) == 0
    result = tinygpt_command.run("export", tmp_path / "seed", tmp_path / "seed.gguf", "--format", "gguf")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("tinygpt export: error: cannot export to llama.cpp's gpt2 architecture: "
                                    "its MLP is always GELU, and this model's is relu")
    assert not (tmp_path / "seed.gguf").exists()


def test_a_killed_exports_temporary_file_is_removed_by_the_next(tmp_path):
    """SIGTERM or SIGKILL skips the clean-up of common.atomic_file: the next export of that name sweeps it."""
    leftover = tmp_path / ".m.gguf.k1ll3d.tmp"
    leftover.write_bytes(b"GGUF half")
    (tmp_path / ".other.gguf.k1ll3d.tmp").write_bytes(b"another file's")
    atomic_write_bytes(tmp_path / "m.gguf", b"GGUF whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.gguf.k1ll3d.tmp", "m.gguf"]
