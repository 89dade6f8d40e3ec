"""Every module imports, and `longpo --help` does not import torch (it must be instant)."""

import importlib
import pkgutil
import subprocess
import sys

import longpo


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(longpo.__path__, prefix="longpo.")]
    assert "longpo.cli" in names
    for name in names:
        importlib.import_module(name)


def test_cli_help_is_light():
    code = "import sys; from longpo.cli import main; main(['--help']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "stages:" in out
    assert out.strip().endswith("False"), f"`longpo --help` imported torch:\n{out}"
