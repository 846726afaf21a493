"""The `noisepath` command: every subcommand explains itself; bad arguments are refused."""

import pytest

from backend.cli import SUBCOMMANDS, main


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: noisepath" in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "precompute" in capsys.readouterr().out


def test_unknown_option_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["validate", "somewhere", "--bogus"])
    assert e.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def _parsers():
    """Every option parser behind `noisepath ... --help`: the subcommands' and the two
    train-demo stages' own."""
    import argparse

    from backend.cli import build_parser

    root = build_parser()
    sub = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    parsers = dict(sub.choices)
    try:
        from precompute.demo import controlnet_train, reflow
    except ImportError:  # the light install: those two need torch
        return parsers
    parsers["train-demo students"] = reflow.build_parser()
    parsers["train-demo controlnet"] = controlnet_train.build_parser()
    return parsers


@pytest.mark.parametrize("name, parser", sorted(_parsers().items()))
def test_help_names_each_default_once_and_never_none(name, parser):
    """An option whose help says its own default ("default 3: below --speech-at-once")
    must not get argparse's "(default: 3)" after it, and an unset option no
    "(default: None)"; under DefaultsHelpFormatter every other option with a default shows
    it (the precompute's own parser words its defaults by hand)."""
    from backend.cli import DefaultsHelpFormatter

    formatter = parser._get_formatter()
    shows_defaults = isinstance(formatter, DefaultsHelpFormatter)
    for action in parser._actions:
        if not action.option_strings or action.help in (None, "==SUPPRESS=="):
            continue
        text = formatter._expand_help(action) if action.help else ""
        named = action.option_strings[-1]
        assert text.lower().count("default") <= 1, f"{name} {named}: {text!r}"
        assert "(default: None)" not in text and "(default: False)" not in text, \
            f"{name} {named}: {text!r}"
        if shows_defaults and action.default not in (None, False, [], "==SUPPRESS==") \
                and action.nargs != 0:
            assert "default" in text.lower(), f"{name} {named}: its default is not shown"
