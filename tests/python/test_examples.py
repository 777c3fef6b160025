"""The pattern examples in examples/ are tests: each must exit 0 against a fresh broker."""
import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py") if p.name != "common.py")


@pytest.mark.parametrize("script", SCRIPTS)
def test_example(broker, script):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        env={**os.environ, "WARREN_URL": broker.url},
        cwd=EXAMPLES,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
