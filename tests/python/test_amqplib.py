"""amqplib (Node.js) against Warren: tests/node/amqplib_smoke.js must exit 0."""
import pathlib
import subprocess

NODE_DIR = pathlib.Path(__file__).resolve().parents[1] / "node"


def test_amqplib(broker):
    assert (NODE_DIR / "node_modules" / "amqplib").exists(), "run `npm ci` in tests/node (.ci/run does)"
    result = subprocess.run(
        ["node", str(NODE_DIR / "amqplib_smoke.js"), broker.url],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
