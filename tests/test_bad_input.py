"""Bad input as a new user meets it: every value that cannot work, every damaged or hand-edited file and
every name that means nothing is one line `tinygpt CMD: error: ...` and a non-zero exit, never a traceback.

Values are refused the same way whichever way they come in (command line, TOML, Python); most rows run
the command's main() in this process, a few run it as a real subprocess.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import one_line
from tinygpt.cli import main
from tinygpt.common import TinyGPTError
from tinygpt.config import ModelConfig, load_config
from tinygpt.model import GPT
from tinygpt.prepare import prepare
from tinygpt.run import Run
from tinygpt.train import Trainer

TINY = {
    "model.n_layer": "1",
    "model.n_embd": "32",
    "model.block_size": "32",
    "train.batch_size": "4",
    "train.eval_windows": "4",
    "train.threads": "1",
    "train.sample_tokens": "0",
}


def run_main(argv: list, capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


# ---------------------------------------------------------------- values: the same refusal from every entry point

NAN, INF = float("nan"), float("inf")
VALUES = [  # key, command-line text, TOML literal, Python value, what the one line says
    ("train.max_time", "nan", '"nan"', "nan", "train.max_time must be a positive finite duration"),
    ("train.max_time", "inf", '"inf"', "inf", "train.max_time must be a positive finite duration"),
    ("train.max_time", "1e400s", '"1e400s"', "1e400s", "train.max_time must be a positive finite duration"),
    ("train.max_time", "-5m", '"-5m"', "-5m", "train.max_time must be a positive finite duration"),
    ("train.max_time", "soon", '"soon"', "soon", "is not a duration"),
    ("train.seed", "-1", "-1", -1, "train.seed must not be negative"),
    ("train.seed", "4294967296", "4294967296", 2**32, "train.seed must be below 2^32"),
    ("model.norm_eps", "-1e-5", "-1e-5", -1e-5, "model.norm_eps must be positive"),
    ("model.norm_eps", "0", "0.0", 0.0, "model.norm_eps must be positive"),
    ("model.rope_theta", "0", "0.0", 0.0, "model.rope_theta must be at least 1"),
    ("model.rope_theta", "-10000", "-10000.0", -1e4, "model.rope_theta must be at least 1"),
    ("model.rope_theta", "nan", "nan", NAN, "model.rope_theta must be a finite number"),
    ("train.lr", "inf", "inf", INF, "train.lr must be a finite number"),
    ("train.lr", "1e400", "1e400", 10**400, "train.lr must be a finite number"),
    ("train.lr", "nan", "nan", NAN, "train.lr must be a finite number"),
    ("train.lr", "-3e-4", "-3e-4", -3e-4, "train.lr must be positive"),
    ("train.min_lr", "1", "1.0", 1.0, "train.min_lr must be in [0, lr]"),
    ("train.weight_decay", "inf", "inf", INF, "train.weight_decay must be a finite number"),
    ("train.grad_clip", "-inf", "-inf", -INF, "train.grad_clip must be a finite number"),
    ("train.beta2", "1", "1.0", 1.0, "betas must be in [0, 1)"),
    ("model.dropout", "1", "1.0", 1.0, "model.dropout must be in [0, 1)"),
    ("model.dropout", "nan", "nan", NAN, "model.dropout must be a finite number"),
    ("data.val_fraction", "inf", "inf", INF, "data.val_fraction must be a finite number"),
    ("model.n_layer", "1e400", "1e400", 10**400, "model.n_layer must"),
    ("model.n_layer", "1e-3", "1e-3", 1e-3, "model.n_layer must be int"),
    ("model.n_layer", "2.5", "2.5", 2.5, "model.n_layer must be int"),
    ("model.n_layer", "0", "0", 0, "model.n_layer must be in [1, 16777216]"),
    ("model.n_embd", "1e9", "1_000_000_000", 10**9, "model.n_embd must be in [1, 16777216]"),
    ("model.vocab_size", "-1", "-1", -1, "model.vocab_size must be in [0, 2^32)"),
    ("train.max_iters", "1e20", "100_000_000_000_000_000_000", 10**20, "train.max_iters must fit in 64 bits"),
    ("train.batch_size", "-3", "-3", -3, "train.batch_size must be positive"),
    ("train.threads", "100000000000", "100000000000", 10**11, "train.threads must be in [0, 1024]"),
    ("data.workers", "-1", "-1", -1, "data.workers must be in [0, 1024]"),
    ("tokenizer.vocab_size", "4294967296", "4294967296", 2**32, "tokenizer.vocab_size must fit in 32 bits"),
    ("train.device", "gpu", '"gpu"', "gpu", "train.device must be auto, cpu, cuda, cuda:N or mps"),
    ("model.init", "xavier", '"xavier"', "xavier", "model.init must be 'gpt2' or 'pytorch'"),
    ("model.embd_dropout", "maybe", '"maybe"', "maybe", "model.embd_dropout must be bool"),
    ("model.tie_weights", "2", "2", 2, "model.tie_weights must be bool"),
    ("model.family", "bert", '"bert"', "bert", "model.family must be"),
    ("train.decay_shape", "cosine", '"cosine"', "cosine", "train.decay_shape must be 'linear' or '1-sqrt'"),
    ("train.short_block_size", "16", "16", 16, "train.short_block_size needs train.schedule 'wsd'"),
]
VALUE_IDS = [f"{key}={text}" for key, text, *_ in VALUES]


@pytest.mark.parametrize("key,text,toml,value,message", VALUES, ids=VALUE_IDS)
def test_a_bad_value_on_the_command_line(key, text, toml, value, message, capsys):
    code, err = run_main(["presets", "tiny", f"--{key}", text], capsys)
    assert code == 2 and message in one_line(err)


@pytest.mark.parametrize("key,text,toml,value,message", VALUES, ids=VALUE_IDS)
def test_a_bad_value_in_a_toml_file(key, text, toml, value, message, tmp_path, capsys):
    section, name = key.split(".")
    path = tmp_path / "bad.toml"
    path.write_text(f"[{section}]\n{name} = {toml}\n")
    code, err = run_main(["presets", path], capsys)
    assert code == 2 and message in one_line(err)


@pytest.mark.parametrize("key,text,toml,value,message", VALUES, ids=VALUE_IDS)
def test_a_bad_value_from_python(key, text, toml, value, message):
    cfg = load_config("tiny")
    section, name = key.split(".")
    setattr(getattr(cfg, section), name, value)
    with pytest.raises(TinyGPTError, match=r"^config: ") as raised:
        cfg.validate()
    assert message in str(raised.value)


def test_the_python_api_validates_where_a_config_enters(char_data, train_txt, tmp_path):
    with pytest.raises(TinyGPTError, match="model.norm_eps must be positive"):
        GPT(ModelConfig(vocab_size=10, norm_eps=-1e-5))
    cfg = load_config("tiny", TINY)
    cfg.train.lr = INF
    with pytest.raises(TinyGPTError, match="train.lr must be a finite number"):
        Trainer(cfg, char_data, tmp_path / "run")
    cfg = load_config("tiny")
    cfg.data.workers = -1
    with pytest.raises(TinyGPTError, match=r"data.workers must be in \[0, 1024\]"):
        prepare([str(train_txt)], tmp_path / "prepared", cfg)


def test_every_process_seed_must_fit_numpy():
    """Process r seeds numpy with seed + r, which must be below 2^32."""
    train = load_config("tiny", {"train.seed": str(2**32 - 2)}).train
    train.check_seed(world_size=2)
    with pytest.raises(TinyGPTError, match=r"train.seed \+ 2 \(one seed per process, seed \+ rank\) must be below 2\^32"):
        train.check_seed(world_size=3)


def test_integers_are_read_exactly():
    cfg = load_config("tiny", {"train.max_iters": "1_000", "train.max_tokens": "2e6", "train.seed": "4294967295"})
    assert (cfg.train.max_iters, cfg.train.max_tokens, cfg.train.seed) == (1000, 2_000_000, 2**32 - 1)


# ---------------------------------------------------------------- commands on damaged files and names that mean nothing


@pytest.fixture(scope="module")
def trained(char_data, tmp_path_factory) -> Path:
    """A finished 4-step run on the char data: checkpoints at steps 2 and 4, best/, metrics."""
    run = tmp_path_factory.mktemp("trained") / "run"
    extra = {"train.max_iters": "4", "train.ckpt_interval": "2", "train.eval_interval": "2"}
    Trainer(load_config("tiny", {**TINY, **extra}), char_data, run).fit()
    return run


@dataclass
class Where:
    """The copies a row damages and names in its command line."""

    run: Path  # a copy of the trained run
    data: Path  # a copy of the prepared char data
    tmp: Path

    def latest(self) -> Path:
        return Run(self.run).latest()

    def edit_json(self, path: Path, change) -> None:
        value = json.loads(path.read_text())
        path.write_text(json.dumps(change(value)))

    def edit_manifest(self, change) -> None:
        self.edit_json(self.data / "manifest.json", change)

    def edit_state(self, change) -> None:
        for folder in Run(self.run).checkpoints():
            self.edit_json(folder / "state.json", change)

    def edit_weights(self, change) -> None:
        for folder in Run(self.run).checkpoints() + [self.run / "best"]:
            with safe_open(folder / "model.safetensors", framework="pt") as f:
                metadata = f.metadata()  # keeps which tensors are tied
            tensors = load_file(folder / "model.safetensors")
            change(tensors)
            save_file(tensors, folder / "model.safetensors", metadata=metadata)

    def shard(self, split: str) -> Path:
        return self.data / f"{split}_000000.bin"

    def only_start_record(self) -> None:
        """The run as a kill before its first checkpoint leaves it: run.json and metrics."""
        shutil.rmtree(self.run / "checkpoints")
        shutil.rmtree(self.run / "best")
        Run(self.run).record_start(load_config("tiny", TINY), self.data, None)


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


def _set(d: dict, key: str, value) -> dict:
    return {**d, key: value}


def _high_ids(path: Path) -> None:
    ids = np.fromfile(path, dtype=np.uint16)
    ids[:] = 1000  # the char vocabulary has 71 ids
    ids.tofile(path)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-3])


def _renamed(tensors: dict) -> None:
    tensors["transformer.wpe.weight_old"] = tensors.pop("transformer.wpe.weight")


def _extra(tensors: dict) -> None:
    tensors["transformer.h.7.attn.c_attn.weight"] = torch.zeros(3)


def _misshaped(tensors: dict) -> None:
    tensors["transformer.wte.weight"] = torch.zeros(72, 32)


RESUME = ["train", "--out", "{run}", "--resume", "auto", "--train.max_iters", "6"]
SAMPLE = ["sample", "{run}", "--prompt", "Once", "--max-new-tokens", "1", "--seed", "1"]
TRAIN_ON = ["train", "--out", "{tmp}/new", "--config", "tiny", *(a for k, v in TINY.items() for a in (f"--{k}", v))]

ROWS = [  # id, how to damage the copies, command line, message in the one line
    # values through the train command (refused before anything is written)
    ("max-time nan", None, [*TRAIN_ON, "--data", "{data}", "--max-time", "nan"], "train.max_time must be a positive finite"),
    ("max-time 1e400s", None, [*TRAIN_ON, "--data", "{data}", "--max-time", "1e400s"], "positive finite duration"),
    ("negative seed", None, [*TRAIN_ON, "--data", "{data}", "--train.seed", "-1"], "train.seed must not be negative"),
    ("device name", None, [*TRAIN_ON, "--data", "{data}", "--device", "gpu"], "train.device must be"),
    # the prepared folder
    ("manifest dtype float16", lambda w: w.edit_manifest(lambda m: _set(m, "dtype", "float16")),
     [*TRAIN_ON, "--data", "{data}"], "dtype 'float16' is not an unsigned token dtype"),
    ("manifest a list", lambda w: w.edit_manifest(lambda m: [m]), [*TRAIN_ON, "--data", "{data}"], "has format version None"),
    ("manifest without splits", lambda w: w.edit_manifest(lambda m: _without(m, "splits")),
     [*TRAIN_ON, "--data", "{data}"], "splits lacks train or val"),
    ("manifest vocab as text", lambda w: w.edit_manifest(lambda m: _set(m, "vocab_size", "71")),
     [*TRAIN_ON, "--data", "{data}"], "vocab_size '71' does not fit uint16"),
    ("manifest shard outside", lambda w: w.edit_manifest(
        lambda m: _set(m, "splits", {**m["splits"], "val": {**m["splits"]["val"], "shards": [{"file": "../x.bin", "tokens": 9}]}})),
     [*TRAIN_ON, "--data", "{data}"], "shard file '../x.bin' is not a .bin file's name"),
    ("manifest token count", lambda w: w.edit_manifest(
        lambda m: _set(m, "splits", {**m["splits"], "val": {**m["splits"]["val"], "tokens": 5}})),
     [*TRAIN_ON, "--data", "{data}"], "splits.val.tokens is not the sum of its shards'"),
    ("shard cut short", lambda w: _truncate(w.shard("train")), [*TRAIN_ON, "--data", "{data}"], "where its manifest says"),
    ("shard missing", lambda w: w.shard("val").unlink(), [*TRAIN_ON, "--data", "{data}"], "val_000000.bin is missing"),
    ("token ids past the vocabulary (train)", lambda w: _high_ids(w.shard("train")),
     [*TRAIN_ON, "--data", "{data}"], "holds token id 1000 at position"),
    ("token ids past the vocabulary (eval)", lambda w: _high_ids(w.shard("val")),
     ["eval", "{run}", "--data", "{data}"], "past the vocabulary of 71"),
    # a run's checkpoints
    ("state.json without step", lambda w: w.edit_state(lambda s: _without(s, "step")), RESUME, "state.json lacks step"),
    ("state.json step as text", lambda w: w.edit_state(lambda s: _set(s, "step", "ten")), RESUME, "has step = 'ten' where int"),
    ("state.json a list", lambda w: w.edit_state(lambda s: [s]), RESUME, "state.json is not a JSON object"),
    ("state.json not JSON", lambda w: (w.latest() / "state.json").write_text("{"), RESUME, "is not valid JSON"),
    ("weights missing a tensor", lambda w: w.edit_weights(_renamed), SAMPLE,
     "missing transformer.wpe.weight; extra transformer.wpe.weight_old"),
    ("weights with an extra tensor", lambda w: w.edit_weights(_extra), SAMPLE, "extra transformer.h.7.attn.c_attn.weight"),
    ("weights mis-shaped", lambda w: w.edit_weights(_misshaped), SAMPLE,
     "mis-shaped transformer.wte.weight [72, 32] (the model's: [71, 32])"),
    ("weights missing a tensor (resume)", lambda w: w.edit_weights(_renamed), RESUME, "missing transformer.wpe.weight"),
    ("weights not safetensors", lambda w: (w.run / "best" / "model.safetensors").write_bytes(b"\0" * 9), SAMPLE, "cannot read"),
    ("optimizer not safetensors", lambda w: (w.latest() / "optimizer.safetensors").write_bytes(b"{}"), RESUME, "cannot read"),
    ("optimizer without groups", lambda w: save_file({}, w.latest() / "optimizer.safetensors", metadata={"json": "{}"}),
     RESUME, "it is not an optimizer's state"),
    ("random state header", lambda w: save_file({}, w.latest() / "rank-00000.safetensors", metadata={"json": "{"}),
     RESUME, "header's 'json' is not valid JSON"),
    ("config.toml not TOML", lambda w: (w.run / "best" / "config.toml").write_text("[model"), SAMPLE, "is not valid TOML"),
    ("run.json damaged", lambda w: (w.only_start_record(), w.edit_json(Run(w.run).start, lambda r: _without(r, "data"))),
     ["train", "--out", "{run}", "--resume", "auto"], "lacks or has damaged data"),
    ("run.json another config", lambda w: w.only_start_record(),
     ["train", "--out", "{run}", "--resume", "auto", "--config", "seed"], "differs from the config"),
    ("run.json other data", lambda w: w.only_start_record(),
     ["train", "--out", "{run}", "--resume", "auto", "--data", "{tmp}"], "differs from the data"),
    # names
    ("info of a path that is nothing", None, ["info", "/nonexistent"], "/nonexistent is neither a run or checkpoint folder nor a preset"),
    ("info of a name that is nothing", None, ["info", "nosuch"], "nosuch is neither a run or checkpoint folder nor a preset"),
    ("info of a plain folder", None, ["info", "{tmp}"], "is neither a run or checkpoint folder nor a preset"),
    ("sample of a path that is nothing", None, ["sample", "/nonexistent"], "/nonexistent is not a run or checkpoint folder (it does not exist)"),
    ("sample of a plain folder", None, ["sample", "{data}"], "is not a run or checkpoint folder"),
    ("sample of a run without checkpoints", lambda w: w.only_start_record(), SAMPLE, "has no checkpoint yet"),
    ("init-from nothing", None, [*TRAIN_ON, "--data", "{data}", "--init-from", "/nonexistent"], "is not a run or checkpoint folder"),
    ("config a folder", None, ["presets", "{tmp}/"], "config file not found"),
    ("unknown preset", None, ["train", "--data", "{data}", "--out", "{tmp}/new", "--config", "nosuch"], "unknown preset 'nosuch'"),
    ("resume a folder that is no checkpoint", None, ["train", "--resume", "{tmp}"], "is not a complete checkpoint"),
    # the command line itself
    ("misspelt command", None, ["trian"], "invalid choice: 'trian'"),
    ("missing arguments", None, ["prepare"], "the following arguments are required"),
    ("resume auto without a run", None, ["train", "--resume", "auto"], "--resume auto needs --out RUN"),
    ("stray argument", None, ["plot", "{run}", "stray"], "unrecognized arguments: stray"),
]  # fmt: skip


@pytest.fixture
def where(trained, char_data, tmp_path) -> Where:
    shutil.copytree(trained, tmp_path / "run")
    shutil.copytree(char_data, tmp_path / "data")
    (tmp_path / "plain").mkdir()
    return Where(tmp_path / "run", tmp_path / "data", tmp_path / "plain")


def command_line(where: Where, argv: list[str]) -> list[str]:
    return [a.format(run=where.run, data=where.data, tmp=where.tmp) for a in argv]


@pytest.mark.parametrize("damage,argv,message", [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_a_bad_input_is_one_line(where, damage, argv, message, capsys):
    if damage:
        damage(where)
    code, err = run_main(command_line(where, argv), capsys)
    assert code == 2 and message in one_line(err)


def test_bad_input_in_real_processes(where, tinygpt_command):
    """A few rows again as a user runs them: a new process, its real stderr and exit code."""
    where.edit_manifest(lambda m: _set(m, "dtype", "float16"))
    rows = {
        "value": (["presets", "tiny", "--model.n_layer", "1e400"], "model.n_layer must fit in 64 bits"),
        "name": (["info", "/nonexistent"], "is neither a run or checkpoint folder nor a preset"),
        "manifest": ([*TRAIN_ON, "--data", where.data], "dtype 'float16' is not an unsigned token dtype"),
    }
    results = tinygpt_command.run_all({name: command_line(where, [str(a) for a in argv]) for name, (argv, _) in rows.items()})
    for name, (_, message) in rows.items():
        assert results[name].returncode == 2, results[name].stderr
        line = one_line(results[name].stderr)
        assert line.startswith(f"tinygpt {rows[name][0][0]}: error: ") and message in line


def test_names_a_folder_cannot_shadow(tmp_path, monkeypatch, capsys):
    """A plain folder called like a preset is not a config file: the preset wins; a run folder is the run."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "seed").mkdir()
    assert main(["presets", "seed"]) == 0 and "n_embd = 64" in capsys.readouterr().out
    assert main(["info", "seed"]) == 0 and "6 layers, 6 heads x 64" in capsys.readouterr().out


def test_info_of_a_run_folder_named_like_a_preset(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(trained, tmp_path / "tiny")
    assert main(["info", "tiny"]) == 0
    assert "trained        4 steps" in capsys.readouterr().out


def test_metrics_that_are_not_utf8_are_skipped_with_a_warning(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    good = (run / "metrics.jsonl").read_bytes()
    (run / "metrics.jsonl").write_bytes(good + b'{"kind": "train", "step": 9, "bpb": \xff\xfe}\n\xc3\x28\n[1, 2]\n')
    (run / "loss.png").unlink()
    assert main(["plot", str(run)]) == 0
    assert (run / "loss.png").stat().st_size > 0
    assert one_line(capsys.readouterr().err) == f"warning: skipped 3 damaged line(s) of {run / 'metrics.jsonl'}"
    # resuming keeps the good points and drops the rest
    assert main(["train", "--out", str(run), "--resume", "auto", "--train.max_iters", "5"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert steps == sorted(steps) and steps[-1] == 5


def test_values_from_python_are_not_rounded():
    """A float where an int belongs is refused, not truncated (1e-3 layers is not 0 layers)."""
    cfg = load_config("tiny")
    cfg.model.n_layer = 1.0
    with pytest.raises(TinyGPTError, match="model.n_layer must be int, got 1.0"):
        cfg.validate()
    cfg = load_config("tiny")
    cfg.train.lr = 1  # an int is a fine float
    assert cfg.validate().train.lr == 1
