"""Every option of every command-line entry point says what it does (issue 15: `--help` with every
option described and its default shown)."""
import argparse
import importlib

import pytest

ENTRY_POINTS = ["train_classifier", "evaluate_classifier", "ablation_classifier", "train_vae", "train_fad_ae",
                "sample_vae", "evaluate_vae", "compare_vae"]


class _Parsed(Exception):
    pass


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_every_option_has_help_and_the_help_shows_defaults(name, monkeypatch, capsys):
    parsers = []

    def capture(self, *args, **kwargs):
        parsers.append(self)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Parsed):
        importlib.import_module(f"models.{name}").main(["--help"])
    parser = parsers[0]
    undocumented = [a.option_strings[0] for a in parser._actions
                    if a.option_strings and a.dest != "help" and not (a.help or "").strip()]
    assert undocumented == [], f"{name}: options without help: {undocumented}"
    monkeypatch.undo()
    text = parser.format_help()
    assert "default" in text, f"{name} --help shows no defaults"
