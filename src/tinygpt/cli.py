"""The `tinygpt` command: one subcommand per stage, each a thin layer over its module.

Every stage module exposes `add_arguments(parser)` and `run(args) -> int`; this file only
wires them together and turns a TinyGPTError (or a full disk, or Ctrl-C) into one line.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from .common import TinyGPTError

# (name, module, one-line help). Modules are imported when the parser is built.
COMMANDS = [
    ("prepare", "tinygpt.data", "turn text (.txt/.jsonl/.json, or 'tinystories' to download it) into token shards"),
    ("train", "tinygpt.train", "train a model on prepared shards or raw text; resume with --resume auto"),
    ("plot", "tinygpt.metrics", "draw the loss curve (bits per byte) of a training run"),
    ("sample", "tinygpt.generate", "generate text from a trained model, streamed as it is sampled"),
    ("eval", "tinygpt.evaluate", "exact loss, perplexity and bits per byte of a model over a text or shards"),
    ("info", "tinygpt.info", "size, FLOPs, memory and training progress of a run, checkpoint or preset"),
    ("export", "tinygpt.export", "export a trained model to a folder Hugging Face transformers loads"),
    ("serve", "tinygpt.serve", "a local story playground: web page and OpenAI-style HTTP API"),
    ("presets", "tinygpt.config", "list the shipped config presets, or print one resolved"),
]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with `command`, only that subcommand's module is imported (and torch
    only if it needs it), so `tinygpt prepare` starts fast and stays small."""
    parser = argparse.ArgumentParser(
        prog="tinygpt",
        description="From raw text to a small GPT you trained yourself. "
        "Data flows one way: text -> tokenizer -> token shards -> model -> checkpoint -> samples.",
        epilog="Run 'tinygpt COMMAND --help' for the options of one command.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"tinygpt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name, help_text in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=argparse.RawDescriptionHelpFormatter)
        if command in (None, name):
            module = importlib.import_module(module_name)
            getattr(module, f"add_{name}_arguments")(p)
            p.set_defaults(_run=getattr(module, f"run_{name}"))
    return parser


def add_config_arguments(p: argparse.ArgumentParser, default_preset: str | None = None) -> None:
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), "")  # the top level has only flags
    parser = build_parser(command)
    args, extra = parser.parse_known_args(argv)
    try:
        from .config import parse_overrides

        if extra and not hasattr(args, "config"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = parse_overrides(extra)
        return int(args._run(args) or 0)
    except TinyGPTError as e:
        print(f"tinygpt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tinygpt {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader left (`| head`): point stdout at /dev/null so the exit-time flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            print(f"tinygpt {args.command}: error: no space left on device ({e.filename or 'disk'})", file=sys.stderr)
        elif e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            print(f"tinygpt {args.command}: error: cannot write {e.filename}: {e.strerror}", file=sys.stderr)
        else:
            print(f"tinygpt {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
