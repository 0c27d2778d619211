"""`alignlab --help` lists the commands; each command's --help lists its config keys."""

from __future__ import annotations

import ctypes
import sys

import pytest

from alignlab.cli import COMMANDS, keep_freed_memory, main


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


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_the_cli_keeps_freed_memory_unless_told_not_to(monkeypatch):
    """glibc keeps freed blocks for reuse (no mmap / page faults per big tensor), except where the user chose
    the allocator: ALIGNLAB_MALLOC=system, their own MALLOC_* settings, or an LD_PRELOADed allocator."""
    try:
        assert callable(ctypes.CDLL("libc.so.6").mallopt)
    except (OSError, AttributeError):
        pytest.skip("not glibc")
    for name in ("ALIGNLAB_MALLOC", "MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "LD_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    assert keep_freed_memory()
    for name, value in (("ALIGNLAB_MALLOC", "system"), ("MALLOC_ARENA_MAX", "2"),
                        ("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")):
        with monkeypatch.context() as env:
            env.setenv(name, value)
            assert not keep_freed_memory()
