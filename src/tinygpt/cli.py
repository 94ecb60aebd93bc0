"""The `tinygpt` command: one subcommand per stage, each a thin layer over its module.

COMMANDS is the table of subcommands: for each, the stage module's function that adds its
options and the one that runs it, named as "module:function" strings and imported only when
that command is chosen. This file wires them together and turns a TinyGPTError (or a full
disk, memory running out, Ctrl-C or SIGTERM) into one line. It imports only `common` and `config`; nothing imports it
but the entry points.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from .common import Terminated, TinyGPTError
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


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other error (TinyGPTError), not usage and error."""

    def error(self, message: str):
        raise TinyGPTError(f"{message} (see '{self.prog} --help')")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with `command`, only that subcommand's module is imported (and torch
    only if it needs it), so `tinygpt prepare` starts fast and stays small."""
    parser = _ArgumentParser(
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


def _pull_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """argv without its `--section.key VALUE` and `--section.key=VALUE` overrides, and those. Left in,
    an override before a positional argument lost its value to it (`prepare --data.val_fraction 0
    a.txt` read 0 as an input file and said the override needs a value)."""
    rest, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "." in arg.split("=")[0] and arg[2:3] not in "-.":
            taken = 1 if "=" in arg else 2
            overrides += argv[i : i + taken]
            i += taken
        else:
            rest.append(arg)
            i += 1
    return rest, overrides


def main(argv: list[str] | None = None) -> int:
    """Run one command; every way it can fail is one line on stderr and an exit code: 2 for bad
    input (TinyGPTError), 1 for the file system or memory, 130 for Ctrl-C, 143 for SIGTERM, at any
    moment from the first import on."""
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), "")  # the top level has only flags
    prefix = f"tinygpt {command}" if command in {c.name for c in COMMANDS} else "tinygpt"
    with _sigterm_raises():
        try:
            parser = build_parser(command)
            argv, overrides = _pull_overrides(argv)
            args, extra = parser.parse_known_args(argv)
            extra += overrides
            if extra and not hasattr(args, "config"):
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            args.overrides = parse_overrides(extra)
            return int(args._run(args) or 0)
        except TinyGPTError as e:
            return _fail(prefix, f"error: {e}", 2)
        except Terminated:
            return _fail(prefix, "terminated", 128 + signal.SIGTERM)
        except KeyboardInterrupt:
            return _fail(prefix, "interrupted", 128 + signal.SIGINT)
        except BrokenPipeError:
            # The reader left (`| head`): point stdout at /dev/null so the exit-time flush stays quiet.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except OSError as e:
            return _fail(prefix, f"error: {_os_error(e)}", 1)
        except (MemoryError, RuntimeError) as e:
            if not _out_of_memory(e):
                raise
            return _fail(prefix, f"error: out of memory: {_first_line(e)} (use a smaller model, batch or context)", 1)


def _fail(prefix: str, message: str, code: int) -> int:
    print(f"{prefix}: {message}", file=sys.stderr)
    return code


def _os_error(e: OSError) -> str:
    """A file-system error in words, naming the file (common.naming_errors gives writes their file's name)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on device while writing {e.filename or 'a file'}"
    if e.errno == errno.EFBIG:
        return f"file too large (a file size limit) while writing {e.filename or 'a file'}"
    if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return f"cannot write {e.filename}: {e.strerror}"
    return str(e)


def _out_of_memory(e: BaseException) -> bool:
    """Whether torch (or Python) said a tensor does not fit: CUDA's OutOfMemoryError, the CPU
    allocator's RuntimeError, or a size whose byte count overflows 64 bits."""
    signs = ("can't allocate memory", "out of memory", "Storage size calculation overflowed")
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or any(s in str(e) for s in signs)


def _first_line(e: BaseException) -> str:
    """torch's allocator messages, cut to their point (the CPU's starts with a C++ assertion)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text.split("DefaultCPUAllocator: ")[-1][:300]


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises common.Terminated, as Ctrl-C raises KeyboardInterrupt, so both end a command
    the same way: its clean-up runs, then one line. Only the main thread can set handlers; a
    SIGTERM that was ignored when the process started stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated

    previous = signal.getsignal(signal.SIGTERM) or signal.SIG_DFL  # None: set outside Python
    if previous != signal.SIG_IGN:
        signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
