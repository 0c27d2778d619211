"""`alignlab --help` lists the commands; each command's --help lists its config keys."""

from __future__ import annotations

import pytest

from alignlab.cli import COMMANDS, main


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("    ") and line.split()[0] in COMMANDS]
    assert sorted(listed) == sorted(COMMANDS)  # every command once, with its one-line help


@pytest.mark.parametrize("command,keys", [("pretrain", ["optim.lr", "run.steps", "model.arch.hidden_size"]),
                                          ("generate", ["temperature", "top_p", "max_new_tokens"])])
def test_command_help_lists_config_keys_with_defaults(capsys, command, keys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    for key in keys:
        line = next(line for line in out.splitlines() if line.strip().startswith(key))
        assert len(line.split()) >= 3, line  # key, default, why


def test_unknown_argument_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["export", "a", "b", "--bogus"])
    assert exit_.value.code == 2
