"""The command line as a user meets it: help texts, presets, overrides and one-line errors."""

import subprocess
import sys
from pathlib import Path

import pytest

from tinygpt.cli import COMMANDS, build_parser, main
from tinygpt.config import load_config, preset_names


@pytest.fixture
def tinygpt(tinygpt_command):
    return tinygpt_command.run


def test_every_command_is_wired():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert sorted(subparsers.choices) == sorted(c.name for c in COMMANDS)


def test_top_level_help_lists_commands(tinygpt):
    result = tinygpt("--help")
    assert result.returncode == 0
    for name in (c.name for c in COMMANDS):
        assert name in result.stdout


@pytest.mark.parametrize("name", [c.name for c in COMMANDS])
def test_command_help(name, tinygpt):
    result = tinygpt(name, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: tinygpt " + name in result.stdout


def test_presets_list_and_resolve(tinygpt):
    result = tinygpt("presets")
    assert result.returncode == 0
    for name in preset_names():
        assert name in result.stdout
    result = tinygpt("presets", "tiny", "--model.n_layer", "3", "--train.lr=0.5")
    assert result.returncode == 0, result.stderr
    assert "n_layer = 3" in result.stdout and "lr = 0.5" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model.n_head", "5"], "model.n_head"),
        (["--model.nope", "1"], "model.nope"),
        (["--model.n_layer", "two"], "model.n_layer"),
        (["--train.batch_size", "0"], "train.batch_size"),
        (["--tokenizer.kind", "words"], "tokenizer.kind"),
        (["--model.n_layer"], "needs a value"),
        (["stray"], "stray"),
    ],
)
def test_bad_overrides_are_one_line_errors(args, message, tinygpt):
    result = tinygpt("presets", "tiny", *args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr


def test_overrides_before_a_positional_argument_keep_their_value(tmp_path, capsys):
    """`--data.val_fraction 0 a.txt` gave its 0 to the inputs and then said the override needs a value."""
    text = tmp_path / "a.txt"
    text.write_text("Once upon a time.\n<|endoftext|>\nThe end.\n")
    argv = ["prepare", "--data.val_fraction", "0", str(text), "--tokenizer.kind=char", "--out", str(tmp_path / "out")]
    assert main([*argv, "--workers", "1"]) == 0
    assert "  train: 2 documents," in capsys.readouterr().out
    assert main(["presets", "--model.n_layer", "3", "tiny"]) == 0 and "n_layer = 3" in capsys.readouterr().out


def test_unknown_preset_and_bad_toml(tmp_path, tinygpt):
    result = tinygpt("presets", "no-such-preset")
    assert result.returncode != 0 and "unknown preset" in result.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nn_layer = 'x'\n")
    result = tinygpt("presets", str(bad))
    assert result.returncode != 0 and "model.n_layer" in result.stderr
    bad.write_text("[model\n")
    result = tinygpt("presets", str(bad))
    assert result.returncode != 0 and "not valid TOML" in result.stderr
    assert "Traceback" not in result.stderr


def test_resolved_config_round_trips_through_toml(tmp_path):
    from tinygpt.config import dump_toml

    cfg = load_config("tiny", {"model.dropout": "0.1", "train.max_time": "90s", "data.text_field": 'say "hi"'})
    path = tmp_path / "config.toml"
    path.write_text(dump_toml(cfg))
    assert load_config(str(path)) == cfg


def test_python_dash_m_and_console_script_agree(tinygpt):
    module = tinygpt("--version")
    script = subprocess.run([Path(sys.executable).with_name("tinygpt"), "--version"], capture_output=True, text=True, check=False)
    assert module.returncode == script.returncode == 0
    assert module.stdout == script.stdout and module.stdout.startswith("tinygpt ")
