"""Smart proxy: requests go through a proxy that rewrites reply_to to its own queue, remembers
where each reply belongs, and routes the service's replies back to the original requesters."""
import pika
from common import connect, pump_until

conn = connect()
service = conn.channel()
service.queue_declare("service")


def serve(c, m, props, body):
    c.basic_publish("", props.reply_to, body.upper(), pika.BasicProperties(correlation_id=props.correlation_id))
    c.basic_ack(m.delivery_tag)


service.basic_consume("service", serve)

proxy = conn.channel()
proxy.queue_declare("proxy.requests")
proxy_replies = proxy.queue_declare("", exclusive=True).method.queue
return_address = {}
handled = []


def forward_request(c, m, props, body):
    return_address[props.correlation_id] = props.reply_to
    c.basic_publish("", "service", body, pika.BasicProperties(reply_to=proxy_replies, correlation_id=props.correlation_id))
    c.basic_ack(m.delivery_tag)


def forward_reply(c, m, props, body):
    handled.append(props.correlation_id)
    c.basic_publish("", return_address.pop(props.correlation_id), body, pika.BasicProperties(correlation_id=props.correlation_id))
    c.basic_ack(m.delivery_tag)


proxy.basic_consume("proxy.requests", forward_request)
proxy.basic_consume(proxy_replies, forward_reply)

clients = conn.channel()
answers = {}
for name in ["alice", "bob"]:
    q = clients.queue_declare("", exclusive=True).method.queue
    clients.basic_consume(q, lambda c, m, p, b, name=name: answers.setdefault(name, (p.correlation_id, b)), auto_ack=True)
    clients.basic_publish("", "proxy.requests", f"hello from {name}".encode(), pika.BasicProperties(reply_to=q, correlation_id=name))
pump_until(conn, lambda: len(answers) == 2)
assert answers == {"alice": ("alice", b"HELLO FROM ALICE"), "bob": ("bob", b"HELLO FROM BOB")}
assert sorted(handled) == ["alice", "bob"] and not return_address
conn.close()
print("smart proxy: ok")
