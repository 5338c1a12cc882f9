"""One linter and formatter configuration (ruff, in pyproject.toml), run by the test suite."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["zoo", "runtime", "cli", "tests", "tools"]


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff(args):
    done = subprocess.run([sys.executable, "-m", "ruff", *args, *PACKAGES], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
