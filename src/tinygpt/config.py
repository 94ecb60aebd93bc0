"""One config tree of dataclasses, filled from a TOML preset and `--section.key value` overrides.

Every value a run depends on lives here, so the resolved config saved beside an output
is enough to reproduce it. Unknown keys and impossible values are rejected with the
dotted name of the key, because a typo that silently keeps a default wastes a run.

`Config.validate()` is the one check of every value, whichever way it came in (a TOML file,
a command-line override, or dataclasses built in Python, which the Trainer, GPT and prepare
validate): each value has its field's type, every float is finite, every int fits in 64 bits,
and each section's ranges hold.
"""

from __future__ import annotations

import dataclasses
import decimal
import math
import os
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .common import DEVICES, TinyGPTError, is_device_name


@dataclass(frozen=True)
class FamilyRules:
    """What a model family allows and implies in a ModelConfig.

    Kept here, torch-free, so that any command checks a config without loading torch; each
    family's modules are built in model.py, under the same name.
    """

    grouped_query: bool  # may have fewer key/value heads than query heads (model.n_kv_head)
    rotary: bool  # rotary positions turn pairs of channels, so the head size must be even
    mlp_hidden: Callable[[int], int]  # n_embd -> the MLP's hidden width when model.mlp_hidden is 0


FAMILY_RULES = {
    "gpt2": FamilyRules(grouped_query=False, rotary=False, mlp_hidden=lambda n_embd: 4 * n_embd),
    # SwiGLU has three matrices where GPT-2's MLP has two: 2/3 of the width keeps the parameter
    # count, rounded up to a multiple of 32
    "llama": FamilyRules(grouped_query=True, rotary=True, mlp_hidden=lambda n_embd: -(-int(2 * 4 * n_embd / 3) // 32) * 32),
}


@dataclass
class ModelConfig:
    family: str = "gpt2"  # "gpt2": learned positions, LayerNorm, GELU/ReLU; "llama": RoPE, RMSNorm, SwiGLU
    vocab_size: int = 0  # 0: taken from the tokenizer
    block_size: int = 256  # context length in tokens
    n_layer: int = 6
    n_head: int = 6
    n_kv_head: int = 0  # llama grouped-query attention; 0: same as n_head
    n_embd: int = 384
    head_size: int = 0  # 0: n_embd // n_head; the seed model used 6 heads of 64 on a 64-wide embedding
    mlp_hidden: int = 0  # 0: 4 * n_embd (gpt2) or 2/3 * 4 * n_embd rounded up to a multiple of 32 (llama)
    activation: str = "gelu"  # gpt2: "gelu" (tanh form), "relu" or "relu2" (ReLU squared); llama: "relu2" gates with it instead of SiLU
    bias_qkv: bool = True
    bias_proj: bool = True
    bias_mlp: bool = True
    bias_head: bool = False
    tie_weights: bool = True
    dropout: float = 0.0
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    qk_norm: bool = False  # queries and keys scaled to unit RMS per head before attention (no learned gain)
    embed_skip: bool = False  # each block's input adds a learned multiple (from 0) of the embeddings (x0)
    # training only: they change how the weights start or are trained, never the architecture
    init: str = "gpt2"  # "gpt2": N(0, 0.02), residual projections N(0, 0.02/sqrt(2*n_layer)), zero biases; "pytorch": torch's own
    embd_dropout: bool = True  # model.dropout also on the embeddings (nanoGPT, llama2.c); the seed had it only in the blocks
    zero_init_proj: bool = False  # projections into the residual stream start at zero: each block starts as the identity

    TRAINING_ONLY: typing.ClassVar[tuple[str, ...]] = ("dropout", "init", "embd_dropout", "zero_init_proj")

    def validate(self) -> None:
        _check_fields(self, "model")
        _check(self.family in FAMILY_RULES, "model.family", f"must be {' or '.join(map(repr, FAMILY_RULES))}")
        rules = FAMILY_RULES[self.family]
        _check(self.activation in ("gelu", "relu", "relu2"), "model.activation", "must be 'gelu', 'relu' or 'relu2'")
        _check(self.init in ("gpt2", "pytorch"), "model.init", "must be 'gpt2' or 'pytorch'")
        for name in ("block_size", "n_layer", "n_head", "n_embd"):
            _check(0 < getattr(self, name) <= MAX_SIZE, f"model.{name}", f"must be in [1, {MAX_SIZE}]")
        for name in ("n_kv_head", "head_size", "mlp_hidden"):
            _check(0 <= getattr(self, name) <= MAX_SIZE, f"model.{name}", f"must be in [0, {MAX_SIZE}]")
        _check(0 <= self.vocab_size < 2**32, "model.vocab_size", "must be in [0, 2^32)")
        _check(
            self.head_size > 0 or self.n_embd % self.n_head == 0,
            "model.n_head",
            f"{self.n_head} heads do not divide n_embd={self.n_embd} (or set model.head_size)",
        )
        if self.n_kv_head:
            grouped = " or ".join(name for name, family in FAMILY_RULES.items() if family.grouped_query)
            _check(rules.grouped_query, "model.n_kv_head", f"grouped-query attention is for the {grouped} family")
            _check(self.n_head % self.n_kv_head == 0, "model.n_kv_head", f"must divide n_head={self.n_head}")
        if rules.rotary:
            _check(self.head_dim % 2 == 0, "model.head_size", "rotary embeddings need an even head size")
        _check(0.0 <= self.dropout < 1.0, "model.dropout", "must be in [0, 1)")
        _check(self.norm_eps > 0, "model.norm_eps", "must be positive (it keeps the normalisation from dividing by 0)")
        _check(self.rope_theta >= 1, "model.rope_theta", "must be at least 1 (rotary frequencies theta^(-2i/d) fall with i)")

    @property
    def head_dim(self) -> int:
        return self.head_size or self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hidden_dim(self) -> int:
        return self.mlp_hidden or FAMILY_RULES[self.family].mlp_hidden(self.n_embd)


@dataclass
class TokenizerConfig:
    kind: str = "bpe"  # "char", "bpe" (Hugging Face tokenizers, byte-level) or "sentencepiece"
    vocab_size: int = 4096  # including <|endoftext|>; ignored by "char" (it takes the characters it sees)
    train_bytes: int = 200_000_000  # size of the corpus sample the tokenizer is trained on

    def validate(self) -> None:
        _check_fields(self, "tokenizer")
        _check(self.kind in ("char", "bpe", "sentencepiece"), "tokenizer.kind", "must be 'char', 'bpe' or 'sentencepiece'")
        if self.kind == "bpe":
            _check(self.vocab_size >= 258, "tokenizer.vocab_size", "must be at least 258 for byte-level BPE (256 bytes + 1 merge + end-of-text)")
        if self.kind == "sentencepiece":
            _check(self.vocab_size >= 262, "tokenizer.vocab_size", "must be at least 262 for sentencepiece (256 bytes + specials)")
        _check(self.vocab_size < 2**32, "tokenizer.vocab_size", "must fit in 32 bits")
        _check(self.train_bytes > 0, "tokenizer.train_bytes", "must be positive")


@dataclass
class DataConfig:
    text_field: str = "text"  # field holding the document in .jsonl / .json inputs (TinyStories JSON: "story")
    val_fraction: float = 0.005  # share of documents held out when no validation file is given
    workers: int = 0  # encoding processes; 0: all cores
    shard_tokens: int = 100_000_000  # tokens per .bin shard
    errors: str = "strict"  # undecodable text (not UTF-8, lone surrogates): "strict": an error; "replace": U+FFFD
    line_endings: str = "normalize"  # "normalize": \r\n and \r in documents become \n; "keep": as in the file

    def validate(self) -> None:
        _check_fields(self, "data")
        _check(0.0 <= self.val_fraction < 1.0, "data.val_fraction", "must be in [0, 1)")
        _check(0 <= self.workers <= MAX_PROCESSES, "data.workers", f"must be in [0, {MAX_PROCESSES}]")
        _check(self.shard_tokens > 0, "data.shard_tokens", "must be positive")
        _check(self.errors in ("strict", "replace"), "data.errors", "must be 'strict' or 'replace'")
        _check(self.line_endings in ("normalize", "keep"), "data.line_endings", "must be 'normalize' or 'keep'")
        _check(bool(self.text_field), "data.text_field", "must not be empty")


@dataclass
class TrainConfig:
    batch_size: int = 32  # sequences per optimizer step on one process (before gradient accumulation)
    grad_accum: int = 1
    max_iters: int = 1000  # budget in optimizer steps ...
    max_tokens: int = 0  # ... or in tokens (0: unused) ...
    max_time: str = ""  # ... or in wall-clock time, e.g. "10m", "90s", "1h" ("": unused)
    lr: float = 1e-3
    min_lr: float = 1e-4
    schedule: str = "cosine"  # after a linear warmup: "constant", "cosine" (down to min_lr) or "wsd" (stable, then a decay: decay_shape)
    warmup_iters: int = 100
    decay_frac: float = 0.2  # wsd: the share of the budget (steps, or seconds of a time budget) the decay takes
    short_block_size: int = 0  # wsd: windows this long until the decay starts, the batch scaled to the same tokens a step (0: unused)
    decay_shape: str = "linear"  # wsd: "linear" (peak to min_lr in a straight line) or "1-sqrt" (min_lr + (peak - min_lr)(1 - sqrt(progress)))
    optimizer: str = "adamw"  # "adamw", or "muon": Muon for the hidden matrices, AdamW for the rest (optim.py)
    muon_lr: float = 0.02  # Muon's peak learning rate (the schedule scales it as it scales lr)
    muon_momentum: float = 0.95
    weight_decay: float = 0.1
    decay_all: bool = False  # True: decay every parameter (what torch.optim.AdamW does by default)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0: no clipping
    eval_interval: int = 250
    eval_windows: int = 200  # validation windows per evaluation (spread evenly over the split, the same every time; 0: all)
    log_interval: int = 50
    ckpt_interval: int = 1000
    keep_last: int = 3
    seed: int = 1337  # process r seeds its generators with seed + r: each must be in [0, 2^32) (numpy's range)
    device: str = "auto"
    dtype: str = "auto"  # "auto" (bfloat16 where the GPU or CPU multiplies in it, else float16 on a GPU, float32 on a CPU), "float32", "bfloat16", "float16"
    compile: str = "auto"  # "auto" (on for CUDA), "on", "off"
    threads: int = 0  # CPU threads for torch; 0: torch's default
    sample_tokens: int = 200  # length of the sample written at every evaluation (RUN/samples.jsonl) and printed at the end; 0: none

    def validate(self) -> None:
        _check_fields(self, "train")
        for name in ("batch_size", "grad_accum", "eval_interval", "log_interval", "ckpt_interval"):
            _check(getattr(self, name) > 0, f"train.{name}", "must be positive")
        for name in ("max_iters", "max_tokens", "warmup_iters", "eval_windows", "keep_last", "sample_tokens"):
            _check(getattr(self, name) >= 0, f"train.{name}", "must not be negative")
        _check(0 <= self.threads <= MAX_PROCESSES, "train.threads", f"must be in [0, {MAX_PROCESSES}]")
        self.check_seed(world_size=1)
        _check(is_device_name(self.device), "train.device", f"must be {DEVICES}, not {self.device!r}")
        _check(self.lr > 0, "train.lr", "must be positive")
        _check(self.optimizer in ("adamw", "muon"), "train.optimizer", "must be 'adamw' or 'muon'")
        _check(self.muon_lr > 0, "train.muon_lr", "must be positive")
        _check(0 <= self.muon_momentum < 1, "train.muon_momentum", "must be in [0, 1)")
        _check(0 <= self.min_lr <= self.lr, "train.min_lr", "must be in [0, lr]")
        _check(self.schedule in ("constant", "cosine", "wsd"), "train.schedule", "must be 'constant', 'cosine' or 'wsd'")
        _check(0 < self.decay_frac <= 1, "train.decay_frac", "must be in (0, 1]")
        _check(self.decay_shape in ("linear", "1-sqrt"), "train.decay_shape", "must be 'linear' or '1-sqrt'")
        _check(self.weight_decay >= 0, "train.weight_decay", "must not be negative")
        _check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "train.beta1", "betas must be in [0, 1)")
        _check(self.grad_clip >= 0, "train.grad_clip", "must not be negative")
        _check(self.dtype in ("auto", "float32", "bfloat16", "float16"), "train.dtype", "must be auto, float32, bfloat16 or float16")
        _check(self.compile in ("auto", "on", "off"), "train.compile", "must be auto, on or off")
        if self.max_time:
            parse_duration(self.max_time, "train.max_time")

    def check_seed(self, world_size: int) -> None:
        """Raise TinyGPTError unless every process's seed, seed + rank for ranks [0, world_size), is in [0, 2^32)."""
        _check(self.seed >= 0, "train.seed", "must not be negative")
        last = "" if world_size == 1 else f" + {world_size - 1} (one seed per process, seed + rank)"
        _check(self.seed + world_size - 1 < 2**32, "train.seed", f"{last} must be below 2^32".lstrip())


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> Config:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()
        short, block_size = self.train.short_block_size, self.model.block_size
        if short:
            _check(
                0 < short < block_size and block_size % short == 0,
                "train.short_block_size",
                f"must be 0 (unused) or a positive divisor of model.block_size={block_size} smaller than it, got {short}",
            )
            _check(self.train.schedule == "wsd", "train.short_block_size", "needs train.schedule 'wsd' (it ends where the decay starts)")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


MAX_SIZE = 2**24  # the largest model dimension (context, width, layers, heads): far past any real model, and
# small enough that no product of two of them overflows 64 bits: too large a model fails as out of memory
MAX_PROCESSES = 1024  # the most worker processes or threads asked for


def differences(a, b, prefix: str = "") -> list[str]:
    """The keys whose values differ between two configs (or two sections of one kind), each as
    "key a -> b", e.g. differences(saved.model, wanted.model, "model.") == ["model.n_layer 2 -> 4"]."""
    found = []
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if dataclasses.is_dataclass(x):
            found += differences(x, y, f"{prefix}{f.name}.")
        elif x != y:
            found.append(f"{prefix}{f.name} {x!r} -> {y!r}")
    return found


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise TinyGPTError(f"config: {key} {message}")


def _check_fields(section, name: str) -> None:
    """Every field of a config section has its annotated type (an int may stand for a float), every
    float is finite and every int fits in 64 bits. Raises TinyGPTError naming the key."""
    for f in dataclasses.fields(section):
        value, typ, key = getattr(section, f.name), _field_type(section, f.name), f"{name}.{f.name}"
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        fits = isinstance(value, typ) and (typ is bool or not isinstance(value, bool)) or typ is float and number
        _check(fits, key, f"must be {typ.__name__}, got {value!r}")
        if typ is float:
            finite = math.isfinite(value) if isinstance(value, float) else abs(value) < 2**63
            _check(finite, key, f"must be a finite number, got {value!r}")
        elif typ is int:
            _check(-(2**63) <= value < 2**63, key, f"must fit in 64 bits, got {value}")


def parse_duration(text: str, key: str = "duration") -> float:
    """'90s', '10m', '1.5h' or plain seconds -> seconds, a positive finite float.

    Raises TinyGPTError for anything else (nan, inf, 1e400s, 0, -5m, 'soon').
    """
    units = {"s": 1, "m": 60, "h": 3600}
    text = text.strip()
    scale = units.get(text[-1:], None)
    number = text[:-1] if scale else text
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        raise TinyGPTError(f"config: {key} {text!r} is not a duration like 90s, 10m or 1h") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise TinyGPTError(f"config: {key} must be a positive finite duration, got {text!r}")
    return seconds


# ---------------------------------------------------------------- presets and overrides

CONFIG_DIRS = (
    Path(__file__).parent / "configs",  # installed wheel (configs/ is packaged here)
    Path(__file__).resolve().parents[2] / "configs",  # source checkout / editable install
)


def preset_names() -> list[str]:
    return sorted({p.stem for d in CONFIG_DIRS if d.is_dir() for p in d.glob("*.toml")})


def is_preset_name(name: str) -> bool:
    """Whether a --config argument names a preset: no path separator and no .toml ending.
    Anything else is a TOML file's path, so a folder called like a preset never shadows it."""
    separators = {os.sep, os.altsep} - {None}
    return not any(sep in name for sep in separators) and not name.endswith(".toml")


def find_preset(name_or_path: str) -> Path:
    """The TOML file of a preset name (see is_preset_name) or the TOML path given.

    Raises TinyGPTError for an unknown preset or a path that is not a file.
    """
    if not is_preset_name(name_or_path):
        path = Path(name_or_path)
        if not path.is_file():
            raise TinyGPTError(f"config file not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
        return path
    for d in CONFIG_DIRS:
        if (d / f"{name_or_path}.toml").is_file():
            return d / f"{name_or_path}.toml"
    raise TinyGPTError(f"unknown preset {name_or_path!r} (known: {', '.join(preset_names())})")


def load_config(preset: str | None = None, overrides: dict[str, str] | None = None, base: dict | None = None) -> Config:
    """Defaults <- `base` (e.g. a saved run's config) <- preset TOML <- overrides, then validate."""
    cfg = Config()
    if base:
        apply_dict(cfg, base, "")
    if preset:
        path = find_preset(preset)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise TinyGPTError(f"config file {path} is not valid TOML: {e}") from None
        apply_dict(cfg, data, "", source=str(path))
    for key, value in (overrides or {}).items():
        set_value(cfg, key, value)
    return cfg.validate()


def config_from_dict(data: dict) -> Config:
    cfg = Config()
    apply_dict(cfg, data, "")
    return cfg.validate()


def apply_dict(obj, data: dict, prefix: str, source: str = "config") -> None:
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise TinyGPTError(f"{source}: unknown key {dotted!r}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise TinyGPTError(f"{source}: {dotted!r} must be a table")
            apply_dict(current, value, f"{dotted}.", source)
        else:
            typ = _field_type(obj, key)
            # TOML writes 3e-4 but also 1 for a float; everything else is checked by validate()
            number = isinstance(value, int) and not isinstance(value, bool)
            setattr(obj, key, float(value) if typ is float and number else value)


def set_value(cfg: Config, dotted: str, raw: str) -> None:
    """Apply one command-line override such as ('model.n_layer', '4')."""
    parts = dotted.split(".")
    obj = cfg
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
            raise TinyGPTError(f"unknown config key {dotted!r}")
        if i < len(parts) - 1:
            obj = getattr(obj, part)
    if dataclasses.is_dataclass(getattr(obj, parts[-1])):
        raise TinyGPTError(f"config key {dotted!r} is a section; set one of its keys")
    setattr(obj, parts[-1], _parse_text(raw, _field_type(obj, parts[-1]), dotted))


def _field_type(obj, name: str) -> type:
    hints = typing.get_type_hints(type(obj))
    t = hints[name]
    if isinstance(t, types.UnionType):
        t = next(a for a in typing.get_args(t) if a is not type(None))
    return t


def _parse_text(raw: str, typ: type, key: str):
    """A command-line value as the field's type; ranges are validate()'s. An int may be written
    1_000_000 or 1e6, but must be a whole number (1e-3 is refused, not rounded to 0)."""
    try:
        if typ is bool:
            if raw.lower() in ("true", "1", "yes", "on"):
                return True
            if raw.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            number = decimal.Decimal(raw.replace("_", ""))
            if not number.is_finite():
                raise ValueError
            if number.adjusted() > 18 or not -(2**63) <= int(number) < 2**63:  # 1e999999999: no billion digits
                raise TinyGPTError(f"config: {key} must fit in 64 bits, got {raw}")
            if number != int(number):
                raise ValueError
            return int(number)
        return typ(raw)
    except (ValueError, decimal.InvalidOperation):
        raise TinyGPTError(f"config: {key} must be {typ.__name__}, got {raw!r}") from None


def parse_overrides(args: list[str]) -> dict[str, str]:
    """['--model.n_layer', '4', '--train.lr=3e-4'] -> {'model.n_layer': '4', 'train.lr': '3e-4'}."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg.split("=")[0]:
            raise TinyGPTError(f"unrecognised argument {arg!r} (config overrides look like --model.n_layer 4)")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise TinyGPTError(f"override {arg} needs a value")
            key, value = arg[2:], args[i + 1]
            i += 2
        out[key] = value
    return out


def dump_toml(cfg: Config) -> str:
    """The resolved config as TOML, saved beside every output."""
    lines = []
    for section, values in cfg.to_dict().items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            else:
                text = repr(value)
            lines.append(f"{key} = {text}")
        lines.append("")
    return "\n".join(lines)


def add_config_arguments(p, default_preset: str | None = None) -> None:
    """--config PRESET_OR_TOML plus any number of --section.key VALUE overrides."""
    p.add_argument(
        "--config",
        "-c",
        default=default_preset,
        metavar="PRESET",
        help="preset name (see 'tinygpt presets') or path to a TOML file"
        + (f" (default: {default_preset})" if default_preset else ""),
    )
    p.epilog = (p.epilog or "") + (
        "Any config key can be overridden as --section.key VALUE, e.g. --model.n_layer 4 --train.lr 3e-4 "
        "(sections: model, tokenizer, data, train; 'tinygpt presets NAME' shows every key)."
    )



# ---------------------------------------------------------------- `tinygpt presets`


def add_presets_arguments(p) -> None:
    p.add_argument("name", nargs="?", help="a preset to print fully resolved (with any overrides)")
    add_config_arguments(p)


def run_presets(args) -> int:
    name = args.name or args.config
    if not name:
        for preset in preset_names():
            first = find_preset(preset).read_text(encoding="utf-8").splitlines()[:1]
            note = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
            print(f"{preset:<14} {note}")
        return 0
    print(dump_toml(load_config(name, args.overrides)), end="")
    return 0
