"""Request/reply: an RPC server answers on the requester's reply_to, matched by correlation_id."""
import uuid

import pika
from common import connect, pump_until

server_conn = connect()
server = server_conn.channel()
server.queue_declare("rpc.square")


def square(ch, method, props, body):
    answer = str(int(body) ** 2).encode()
    ch.basic_publish("", props.reply_to, answer, pika.BasicProperties(correlation_id=props.correlation_id))
    ch.basic_ack(method.delivery_tag)


server.basic_consume("rpc.square", square)

client_conn = connect()
client = client_conn.channel()


def call(reply_to, consume_from, n):
    replies = {}
    tag = client.basic_consume(consume_from, lambda c, m, p, b: replies.update({p.correlation_id: b}), auto_ack=True)
    correlation = str(uuid.uuid4())
    client.basic_publish("", "rpc.square", str(n).encode(), pika.BasicProperties(reply_to=reply_to, correlation_id=correlation))

    def answered():
        server_conn.process_data_events(time_limit=0)
        return correlation in replies

    pump_until(client_conn, answered)
    client.basic_cancel(tag)
    return int(replies[correlation])


# A private callback queue.
callback = client.queue_declare("", exclusive=True).method.queue
assert call(callback, callback, 7) == 49
# Direct reply-to: no queue at all.
assert call("amq.rabbitmq.reply-to", "amq.rabbitmq.reply-to", 12) == 144
client_conn.close()
server_conn.close()
print("request/reply: ok")
