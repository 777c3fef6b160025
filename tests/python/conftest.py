"""Fixtures: a real warren process per test, on a free port with its own data directory."""
import os
import subprocess

import pika
import pytest


class Broker:
    def __init__(self, binary, data_dir, log_path, args=(), listen="127.0.0.1:0"):
        self.listen = listen
        self.binary = binary
        self.data_dir = data_dir
        self.log_path = log_path
        self.args = list(args)
        self.proc = None
        self.port = None

    def start(self):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                self.binary, "--data-dir", str(self.data_dir), "--listen", self.listen,
                "--admin-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", *self.args,
            ],
            stdout=subprocess.PIPE,
            stderr=log,
        )
        line = self.proc.stdout.readline().decode()
        assert line.startswith("listening on "), f"warren did not start: {line!r}"
        self.port = int(line.strip().rsplit(":", 1)[1])
        admin = self.proc.stdout.readline().decode()
        assert admin.startswith("admin listening on "), f"no admin plane: {admin!r}"
        self.admin_url = "http://" + admin.strip().rsplit(" ", 1)[1]

    def kill(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def terminate(self):
        """SIGTERM: connections are closed with 320 and the log is synced before exit."""
        self.proc.terminate()
        assert self.proc.wait(timeout=30) == 0
        self.proc = None

    def params(self, **kwargs):
        kwargs.setdefault("credentials", pika.PlainCredentials("guest", "guest"))
        return pika.ConnectionParameters("127.0.0.1", self.port, **kwargs)

    def connect(self, **kwargs):
        return pika.BlockingConnection(self.params(**kwargs))

    @property
    def url(self):
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2f"


@pytest.fixture
def broker(tmp_path):
    b = Broker(os.environ["WARREN_BIN"], tmp_path / "data", tmp_path / "warren.log")
    b.start()
    yield b
    b.kill()


@pytest.fixture
def channel(broker):
    conn = broker.connect()
    ch = conn.channel()
    yield ch
    if conn.is_open:
        conn.close()
