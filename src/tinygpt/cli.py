"""The `tinygpt` command: one subcommand per stage, each a thin layer over its module.

COMMANDS is the table of subcommands: for each, the stage module's function that adds its
options and the one that runs it, named as "module:function" strings and imported only when
that command is chosen. This file wires them together and turns a TinyGPTError (or a full
disk, or Ctrl-C) into one line. It imports only `common` and `config`; nothing imports it
but the entry points.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from dataclasses import dataclass

from .common import TinyGPTError
from .config import parse_overrides


@dataclass(frozen=True)
class Command:
    """One subcommand: its one-line help and two "module:function" names, imported only when
    the command is chosen (so `tinygpt prepare` never imports torch)."""

    name: str
    help: str
    arguments: str  # adds the command's options to its parser
    run: str  # runs it: argparse.Namespace -> exit code


COMMANDS = (
    Command("prepare", "turn text (.txt/.jsonl/.json, or 'tinystories' to download it) into token shards",
            "tinygpt.prepare:add_prepare_arguments", "tinygpt.prepare:run_prepare"),
    Command("train", "train a model on prepared shards or raw text; resume with --resume auto",
            "tinygpt.train:add_train_arguments", "tinygpt.train:run_train"),
    Command("plot", "draw the loss curve (bits per byte) of a training run",
            "tinygpt.metrics:add_plot_arguments", "tinygpt.metrics:run_plot"),
    Command("sample", "generate text from a trained model, streamed as it is sampled",
            "tinygpt.generate:add_sample_arguments", "tinygpt.generate:run_sample"),
    Command("eval", "exact loss, perplexity and bits per byte of a model over a text or shards",
            "tinygpt.evaluate:add_eval_arguments", "tinygpt.evaluate:run_eval"),
    Command("inspect", "look inside a model: surprisal per token, attention, logit lens, what it learned",
            "tinygpt.analysis_view:add_inspect_arguments", "tinygpt.analysis_view:run_inspect"),
    Command("info", "size, FLOPs, memory and training progress of a run, checkpoint or preset",
            "tinygpt.info:add_info_arguments", "tinygpt.info:run_info"),
    Command("export", "export a trained model for Hugging Face transformers, llama.cpp or Ollama",
            "tinygpt.export:add_export_arguments", "tinygpt.export:run_export"),
    Command("serve", "a local story playground: web page and OpenAI-style HTTP API",
            "tinygpt.serve:add_serve_arguments", "tinygpt.serve:run_serve"),
    Command("presets", "list the shipped config presets, or print one resolved",
            "tinygpt.config:add_presets_arguments", "tinygpt.config:run_presets"),
)  # fmt: skip


def _function(name: str):
    """The function a "module:function" name points at, importing its module."""
    module, function = name.split(":")
    return getattr(importlib.import_module(module), function)


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
    for c in COMMANDS:
        p = sub.add_parser(c.name, help=c.help, description=c.help, formatter_class=argparse.RawDescriptionHelpFormatter)
        if command in (None, c.name):
            _function(c.arguments)(p)
            p.set_defaults(_run=_function(c.run))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), "")  # the top level has only flags
    parser = build_parser(command)
    args, extra = parser.parse_known_args(argv)
    try:
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
