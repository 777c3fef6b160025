"""The pattern examples in examples/ are tests: each must exit 0 against a fresh broker."""
import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py") if p.name != "common.py")
SCRIPTS += sorted(p.name for p in EXAMPLES.glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_example(broker, script):
    command = [sys.executable] if script.endswith(".py") else ["bash"]
    warrenctl = pathlib.Path(os.environ["WARREN_BIN"]).with_name("warrenctl")
    result = subprocess.run(
        [*command, str(EXAMPLES / script)],
        env={
            **os.environ,
            "WARREN_URL": broker.url,
            "WARREN_ADMIN": broker.admin_url,
            "WARRENCTL": str(warrenctl),
        },
        cwd=EXAMPLES,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
