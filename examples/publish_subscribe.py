"""Publish/subscribe: every subscriber gets its own copy through a fanout exchange."""
from common import connect, pump_until

conn = connect()
ch = conn.channel()
ch.exchange_declare("logs", "fanout")
received = {0: [], 1: []}
for n in received:
    queue = ch.queue_declare("", exclusive=True).method.queue
    assert queue.startswith("amq.gen-")
    ch.queue_bind(queue, "logs")
    ch.basic_consume(queue, lambda c, m, p, b, n=n: received[n].append(b), auto_ack=True)
for line in [b"one", b"two", b"three"]:
    ch.basic_publish("logs", "", line)
pump_until(conn, lambda: all(len(r) == 3 for r in received.values()))
assert received[0] == received[1] == [b"one", b"two", b"three"]
conn.close()
print("publish/subscribe: ok")
