"""Detour: switch a route through a validation step and back at runtime.

`ingress` normally routes to `work`. With the detour on, `ingress` routes to `validate`; a
validator checks each message and forwards the valid ones to `validated`, which routes to `work`.
"""
import pika
from common import connect, pump_until

conn = connect()
ch = conn.channel()
ch.exchange_declare("ingress", "direct")
ch.exchange_declare("validated", "direct")
for q in ["work", "validate"]:
    ch.queue_declare(q)
    ch.queue_purge(q)
ch.queue_bind("work", "ingress", "job")
ch.queue_bind("work", "validated", "job")

validator = conn.channel()
forwarded = []


def validate(c, m, props, body):
    if body.startswith(b"ok"):
        headers = dict(props.headers or {})
        headers["validated"] = True
        c.basic_publish("validated", m.routing_key, body, pika.BasicProperties(headers=headers))
    forwarded.append(body)
    c.basic_ack(m.delivery_tag)


validator.basic_consume("validate", validate)


def drain():
    out = []
    while True:
        m, props, body = ch.basic_get("work", auto_ack=True)
        if m is None:
            return out
        out.append((body, bool((props.headers or {}).get("validated"))))


ch.basic_publish("ingress", "job", b"ok-1")
# Detour on: bind the validation step first, then remove the direct route, so no message
# finds no route while switching.
ch.queue_bind("validate", "ingress", "job")
ch.queue_unbind("work", "ingress", "job")
ch.basic_publish("ingress", "job", b"ok-2")
ch.basic_publish("ingress", "job", b"bad-3")
pump_until(conn, lambda: len(forwarded) == 2)
# Detour off, in the same order.
ch.queue_bind("work", "ingress", "job")
ch.queue_unbind("validate", "ingress", "job")
ch.basic_publish("ingress", "job", b"ok-4")
pump_until(conn, lambda: True)
assert drain() == [(b"ok-1", False), (b"ok-2", True), (b"ok-4", False)], "invalid message stopped at the detour"
conn.close()
print("detour: ok")
