"""Wire tap: copy a flow to a tap queue with an exchange-to-exchange binding, without touching the
application's own bindings; remove the tap again."""
from common import connect

conn = connect()
ch = conn.channel()
ch.exchange_declare("orders", "direct")
ch.queue_declare("orders.eu")
ch.queue_purge("orders.eu")
ch.queue_bind("orders.eu", "orders", "eu")
ch.exchange_declare("tap", "fanout")
ch.queue_declare("tap.copy")
ch.queue_purge("tap.copy")
ch.queue_bind("tap.copy", "tap")


def drain(queue):
    out = []
    while True:
        m, _, body = ch.basic_get(queue, auto_ack=True)
        if m is None:
            return out
        out.append(body)


ch.confirm_delivery()
ch.basic_publish("orders", "eu", b"before")
ch.exchange_bind("tap", "orders", "eu")  # tap on
ch.basic_publish("orders", "eu", b"tapped")
ch.exchange_unbind("tap", "orders", "eu")  # tap off
ch.basic_publish("orders", "eu", b"after")
assert drain("orders.eu") == [b"before", b"tapped", b"after"], "the main flow is unchanged"
assert drain("tap.copy") == [b"tapped"], "the tap saw only what passed while it was on"
conn.close()
print("wire tap: ok")
