"""Celery and kombu, unchanged, against Warren: a worker runs tasks and returns results over
the rpc:// backend (reply queues), and kombu's SimpleQueue round-trips messages."""
import subprocess
import sys
import textwrap

import kombu

TASKS = """
from celery import Celery

app = Celery("tasks", broker="{url}", backend="rpc://")
app.conf.broker_connection_retry_on_startup = True
app.conf.task_acks_late = True


@app.task
def add(x, y):
    return x + y
"""


def test_celery_worker_runs_tasks(broker, tmp_path, monkeypatch):
    (tmp_path / "tasks.py").write_text(textwrap.dedent(TASKS.format(url=broker.url)))
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool=solo",
         "--loglevel=warning", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "worker.log", "wb"),
    )
    try:
        monkeypatch.syspath_prepend(str(tmp_path))
        import tasks

        results = [tasks.add.delay(i, i) for i in range(5)]
        assert [r.get(timeout=60) for r in results] == [0, 2, 4, 6, 8]
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        sys.modules.pop("tasks", None)


def test_kombu_simple_queue(broker):
    with kombu.Connection(broker.url) as conn:
        queue = conn.SimpleQueue("kombu-simple")
        queue.put({"hello": "world"}, serializer="json")
        message = queue.get(block=True, timeout=10)
        assert message.payload == {"hello": "world"}
        message.ack()
        queue.close()
