"""Competing consumers: workers share a queue; a task taken by a worker that dies is redelivered."""
from common import connect, pump_until
import pika

producer = connect()
ch = producer.channel()
ch.queue_declare("tasks", durable=True)
ch.queue_purge("tasks")
ch.confirm_delivery()
for i in range(4):
    ch.basic_publish("", "tasks", f"task-{i}".encode(), pika.BasicProperties(delivery_mode=2))

# Worker A takes one task (prefetch 1) and dies before acknowledging it.
worker_a = connect()
a = worker_a.channel()
a.basic_qos(prefetch_count=1)
taken = []
a.basic_consume("tasks", lambda c, m, p, b: taken.append(b))
pump_until(worker_a, lambda: taken)
assert taken == [b"task-0"]
worker_a.close()  # no ack: as if the process had been killed

# Worker B gets everything, task-0 again first, marked redelivered.
worker_b = connect()
b = worker_b.channel()
b.basic_qos(prefetch_count=1)
done = []


def work(c, m, p, body):
    done.append((body, m.redelivered))
    c.basic_ack(m.delivery_tag)


b.basic_consume("tasks", work)
pump_until(worker_b, lambda: len(done) == 4)
assert done[0] == (b"task-0", True), done
assert [d[0] for d in done] == [b"task-0", b"task-1", b"task-2", b"task-3"]
assert all(not r for _, r in done[1:])
worker_b.close()
producer.close()
print("competing consumers: ok")
