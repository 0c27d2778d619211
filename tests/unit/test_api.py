"""The top-level API: every name in `alignlab.__all__` resolves, and importing alignlab is cheap."""

from __future__ import annotations

import subprocess
import sys

import alignlab


def test_every_public_name_resolves():
    for name in alignlab.__all__:
        assert getattr(alignlab, name) is not None, name
    assert callable(alignlab.grpo) and alignlab.GRPOConfig().num_generations == 8


def test_import_does_not_load_torch():
    code = "import sys, alignlab; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
