"""The `scaling` command explains itself: top-level help and every subcommand's --help."""

import pytest

from scaling import cli


def test_top_level_help_lists_every_command(capsys):
    assert cli.main(["scaling", "--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_is_an_error(capsys):
    assert cli.main(["scaling", "trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_each_subcommand_has_help(command, capsys):
    try:
        code = cli.main(["scaling", command, "--help"])
    except SystemExit as exit_:  # argparse-based commands exit after printing help
        code = exit_.code
    assert code == 0
    out = capsys.readouterr().out
    assert "usage" in out.lower() and len(out.splitlines()) >= 5, out
