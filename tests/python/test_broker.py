"""The broker seen from Python's pika: queue features, routing, errors, RPC."""
import socket
import time

import pika
import pytest
from pika.exceptions import (
    AMQPConnectionError,
    ChannelClosedByBroker,
    ConnectionClosedByBroker,
    NackError,
    UnroutableError,
)

PERSISTENT = pika.BasicProperties(delivery_mode=2)


def get_all(ch, queue):
    bodies = []
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)


def wait_for_message(ch, queue, timeout=10):
    """The next message of `queue`, waiting for it to arrive (consumer with a timeout)."""
    for method, props, body in ch.consume(queue, inactivity_timeout=timeout):
        assert method is not None, f"nothing arrived on {queue} within {timeout} s"
        ch.basic_ack(method.delivery_tag)
        ch.cancel()
        return method, props, body


def reply_code_of(excinfo):
    return excinfo.value.args[0]


# ----- connection -----

def test_wrong_password_is_refused(broker):
    with pytest.raises(AMQPConnectionError) as e:
        broker.connect(credentials=pika.PlainCredentials("guest", "wrong"))
    assert "ACCESS_REFUSED" in repr(e.value) or "403" in repr(e.value)


def test_unknown_vhost_is_not_allowed(broker):
    with pytest.raises(AMQPConnectionError) as e:
        broker.connect(virtual_host="nope")
    assert "530" in repr(e.value) or "NOT_ALLOWED" in repr(e.value)


def test_bad_protocol_header_gets_ours_back(broker):
    s = socket.create_connection(("127.0.0.1", broker.port))
    s.sendall(b"HTTP/1.1")
    s.settimeout(5)
    assert s.recv(8) == b"AMQP\x00\x00\x09\x01"
    assert s.recv(8) == b"", "the server closes after answering"


def test_heartbeats_keep_an_idle_connection_open(broker):
    conn = broker.connect(heartbeat=1)
    conn.process_data_events(time_limit=3.5)
    assert conn.is_open
    ch = conn.channel()
    ch.queue_declare("still-here")
    conn.close()


# ----- queue arguments -----

def test_message_ttl_dead_letters_as_expired(channel):
    channel.exchange_declare("dlx", "fanout")
    channel.queue_declare("expired")
    channel.queue_bind("expired", "dlx")
    channel.queue_declare("short", arguments={"x-message-ttl": 50, "x-dead-letter-exchange": "dlx"})
    channel.basic_publish("", "short", b"stale")
    _, props, body = wait_for_message(channel, "expired")
    assert body == b"stale"
    death = props.headers["x-death"][0]
    assert death["reason"] == "expired" and death["queue"] == "short" and death["count"] == 1
    assert props.headers["x-first-death-reason"] == "expired"


def test_per_message_expiration(channel):
    channel.exchange_declare("dlx2", "fanout")
    channel.queue_declare("expired2")
    channel.queue_bind("expired2", "dlx2")
    channel.queue_declare("q", arguments={"x-dead-letter-exchange": "dlx2"})
    channel.basic_publish("", "q", b"soon", pika.BasicProperties(expiration="30"))
    _, props, body = wait_for_message(channel, "expired2")
    assert body == b"soon"
    assert props.headers["x-death"][0]["original-expiration"] == "30"
    assert props.expiration is None


def test_max_length_drops_the_head(channel):
    channel.queue_declare("capped", arguments={"x-max-length": 2})
    for b in [b"1", b"2", b"3"]:
        channel.basic_publish("", "capped", b)
    assert get_all(channel, "capped") == [b"2", b"3"]


def test_max_length_bytes(channel):
    channel.queue_declare("bytes-capped", arguments={"x-max-length-bytes": 10})
    for b in [b"aaaaa", b"bbbbb", b"ccccc"]:
        channel.basic_publish("", "bytes-capped", b)
    assert get_all(channel, "bytes-capped") == [b"bbbbb", b"ccccc"]


def test_reject_publish_overflow_nacks(channel):
    channel.confirm_delivery()
    channel.queue_declare("full", durable=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    channel.basic_publish("", "full", b"fits", PERSISTENT)
    with pytest.raises(NackError):
        channel.basic_publish("", "full", b"refused", PERSISTENT)
    assert get_all(channel, "full") == [b"fits"]


def test_priority_queue_delivers_highest_first(channel):
    channel.queue_declare("prio", arguments={"x-max-priority": 10})
    for p in [1, 5, 9, 5]:
        channel.basic_publish("", "prio", str(p).encode(), pika.BasicProperties(priority=p))
    assert get_all(channel, "prio") == [b"9", b"5", b"5", b"1"]


def test_single_active_consumer(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare("sac", arguments={"x-single-active-consumer": True})
    got = {"a": [], "b": []}
    ch.basic_consume("sac", lambda c, m, p, b: got["a"].append(b), auto_ack=True, consumer_tag="a")
    ch.basic_consume("sac", lambda c, m, p, b: got["b"].append(b), auto_ack=True, consumer_tag="b")
    for i in range(4):
        ch.basic_publish("", "sac", str(i).encode())
    deadline = time.time() + 10
    while len(got["a"]) < 4 and time.time() < deadline:
        conn.process_data_events(time_limit=0.1)
    assert got == {"a": [b"0", b"1", b"2", b"3"], "b": []}
    ch.basic_cancel("a")
    ch.basic_publish("", "sac", b"4")
    while not got["b"] and time.time() < deadline:
        conn.process_data_events(time_limit=0.1)
    assert got["b"] == [b"4"]
    conn.close()


def test_delivery_limit_dead_letters_and_counts(channel):
    channel.exchange_declare("poison", "fanout")
    channel.queue_declare("poisoned")
    channel.queue_bind("poisoned", "poison")
    channel.queue_declare(
        "limited",
        durable=True,
        arguments={"x-queue-type": "quorum", "x-delivery-limit": 1, "x-dead-letter-exchange": "poison"},
    )
    channel.basic_publish("", "limited", b"bad", PERSISTENT)
    m, p, _ = channel.basic_get("limited")
    assert (p.headers or {}).get("x-delivery-count") is None
    channel.basic_reject(m.delivery_tag, requeue=True)
    m, p, _ = channel.basic_get("limited")
    assert m.redelivered and p.headers["x-delivery-count"] == 1
    channel.basic_reject(m.delivery_tag, requeue=True)
    _, props, body = wait_for_message(channel, "poisoned")
    assert body == b"bad" and props.headers["x-death"][0]["reason"] == "delivery_limit"
    assert get_all(channel, "limited") == []


def test_quorum_queue_must_be_durable(channel):
    with pytest.raises(ChannelClosedByBroker) as e:
        channel.queue_declare("qq", durable=False, arguments={"x-queue-type": "quorum"})
    assert reply_code_of(e) == 406


def test_consumer_priorities(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare("cp")
    ch.basic_qos(prefetch_count=10)
    got = {"low": 0, "high": 0}

    def on(tag):
        def cb(c, m, p, b):
            got[tag] += 1
        return cb

    ch.basic_consume("cp", on("low"), consumer_tag="low", arguments={"x-priority": 0})
    ch.basic_consume("cp", on("high"), consumer_tag="high", arguments={"x-priority": 10})
    for i in range(6):
        ch.basic_publish("", "cp", b"x")
    deadline = time.time() + 10
    while got["high"] + got["low"] < 6 and time.time() < deadline:
        conn.process_data_events(time_limit=0.1)
    assert got == {"low": 0, "high": 6}
    conn.close()


def test_purge_and_conditional_delete(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare("p")
    for _ in range(3):
        ch.basic_publish("", "p", b"x")
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_delete("p", if_empty=True)
    assert reply_code_of(e) == 406
    ch = conn.channel()
    assert ch.queue_purge("p").method.message_count == 3
    ch.basic_consume("p", lambda *a: None)
    other = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        other.queue_delete("p", if_unused=True)
    assert reply_code_of(e) == 406
    ch.queue_delete("p")
    ch.queue_delete("never-existed")
    conn.close()


def test_auto_delete_queue_goes_with_its_last_consumer(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare("ephemeral", auto_delete=True)
    tag = ch.basic_consume("ephemeral", lambda *a: None)
    ch.basic_cancel(tag)
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare("ephemeral", passive=True)
    assert reply_code_of(e) == 404
    conn.close()


def test_exclusive_queue_goes_with_its_connection(broker):
    conn = broker.connect()
    name = conn.channel().queue_declare("", exclusive=True).method.queue
    assert name.startswith("amq.gen-")
    other = broker.connect()
    with pytest.raises(ChannelClosedByBroker) as e:
        other.channel().queue_declare(name, passive=True)
    assert reply_code_of(e) == 405
    conn.close()
    with pytest.raises(ChannelClosedByBroker) as e:
        other.channel().queue_declare(name, passive=True)
    assert reply_code_of(e) == 404
    other.close()


def test_x_expires_deletes_an_unused_queue(channel):
    channel.queue_declare("transient-q", arguments={"x-expires": 100})
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            channel.queue_declare("transient-q", passive=True)
        except ChannelClosedByBroker as e:
            assert e.args[0] == 404
            return
        # A passive declare does not count as use; poll the observable state.
        time.sleep(0.05)
    pytest.fail("queue with x-expires was not deleted")


def test_reserved_names_and_redeclare(channel):
    with pytest.raises(ChannelClosedByBroker) as e:
        channel.queue_declare("amq.mine")
    assert reply_code_of(e) == 403


def test_redeclare_with_other_arguments_is_406(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare("args", arguments={"x-max-length": 5})
    ch.queue_declare("args", arguments={"x-max-length": 5})
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare("args", arguments={"x-max-length": 6})
    assert reply_code_of(e) == 406
    conn.close()


# ----- consuming and settling -----

def test_recover_and_nack_multiple_requeue(channel):
    channel.queue_declare("r")
    for b in [b"1", b"2", b"3"]:
        channel.basic_publish("", "r", b)
    tags = [channel.basic_get("r")[0].delivery_tag for _ in range(3)]
    channel.basic_nack(tags[1], multiple=True, requeue=True)
    m, _, body = channel.basic_get("r")
    assert body == b"1" and m.redelivered
    channel.basic_recover(requeue=True)
    bodies = [channel.basic_get("r", auto_ack=True)[2] for _ in range(3)]
    assert bodies == [b"1", b"2", b"3"]


def test_get_empty_and_unknown_tag(channel):
    channel.queue_declare("e")
    assert channel.basic_get("e") == (None, None, None)
    channel.basic_ack(12345)
    with pytest.raises(ChannelClosedByBroker) as e:
        channel.queue_declare("e", passive=True)
    assert reply_code_of(e) == 406


def test_global_qos_limits_the_channel(broker):
    conn = broker.connect()
    ch = conn.channel()
    for q in ["g1", "g2"]:
        ch.queue_declare(q)
        for _ in range(5):
            ch.basic_publish("", q, b"x")
    ch.basic_qos(prefetch_count=3, global_qos=True)
    got = []
    ch.basic_consume("g1", lambda c, m, p, b: got.append(m.delivery_tag))
    ch.basic_consume("g2", lambda c, m, p, b: got.append(m.delivery_tag))
    conn.process_data_events(time_limit=0.5)
    assert len(got) == 3, got
    ch.basic_ack(got[-1], multiple=True)
    conn.process_data_events(time_limit=0.5)
    assert len(got) == 6, got
    conn.close()


def test_qos_prefetch_size_is_not_implemented(broker):
    conn = broker.connect()
    with pytest.raises(ConnectionClosedByBroker) as e:
        conn.channel().basic_qos(prefetch_size=1000)
    assert reply_code_of(e) == 540


# ----- exchanges -----

def test_exchange_errors(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.exchange_declare("used", "direct")
    ch.queue_declare("b")
    ch.queue_bind("b", "used", "k")
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.exchange_delete("used", if_unused=True)
    assert reply_code_of(e) == 406
    ch = conn.channel()
    ch.exchange_delete("does-not-exist")
    ch.queue_unbind("b", "used", "no-such-key")
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.exchange_declare("used", "fanout")
    assert reply_code_of(e) == 406
    ch = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.exchange_declare("nope", "direct", passive=True)
    assert reply_code_of(e) == 404
    conn.close()


def test_internal_exchange_refuses_publishes(channel):
    channel.exchange_declare("inner", "fanout", internal=True)
    channel.basic_publish("inner", "", b"x")
    with pytest.raises(ChannelClosedByBroker) as e:
        channel.queue_declare("whatever")
    assert reply_code_of(e) == 403


def test_publish_to_missing_exchange_is_404(channel):
    channel.basic_publish("missing-exchange", "", b"x")
    with pytest.raises(ChannelClosedByBroker) as e:
        channel.queue_declare("whatever")
    assert reply_code_of(e) == 404


def test_user_id_must_match(channel):
    channel.queue_declare("u")
    channel.basic_publish("", "u", b"x", pika.BasicProperties(user_id="mallory"))
    with pytest.raises(ChannelClosedByBroker) as e:
        channel.queue_declare("u")
    assert reply_code_of(e) == 406


def test_headers_all_with_x(channel):
    channel.queue_declare("hx")
    channel.queue_bind("hx", "amq.match", arguments={"x-match": "all-with-x", "x-tenant": "a", "kind": "k"})
    channel.basic_publish("amq.match", "", b"no", pika.BasicProperties(headers={"kind": "k"}))
    channel.basic_publish("amq.match", "", b"yes", pika.BasicProperties(headers={"kind": "k", "x-tenant": "a"}))
    assert get_all(channel, "hx") == [b"yes"]


def test_mandatory_unroutable_raises_in_confirm_mode(channel):
    channel.confirm_delivery()
    with pytest.raises(UnroutableError):
        channel.basic_publish("", "no-such-queue", b"x", mandatory=True)


# ----- request/reply -----

def test_direct_reply_to(broker):
    conn = broker.connect()
    server = conn.channel()
    server.queue_declare("rpc")

    def serve(ch, method, props, body):
        ch.basic_publish("", props.reply_to, b"pong:" + body, pika.BasicProperties(correlation_id=props.correlation_id))
        ch.basic_ack(method.delivery_tag)

    server.basic_consume("rpc", serve)
    client = conn.channel()
    replies = []
    client.basic_consume("amq.rabbitmq.reply-to", lambda c, m, p, b: replies.append((p.correlation_id, b)), auto_ack=True)
    client.basic_publish("", "rpc", b"ping", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id="c1"))
    deadline = time.time() + 10
    while not replies and time.time() < deadline:
        conn.process_data_events(time_limit=0.1)
    assert replies == [("c1", b"pong:ping")]
    conn.close()


def test_reply_to_without_consumer_is_refused(channel):
    channel.basic_publish("", "x", b"x", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to"))
    with pytest.raises(ChannelClosedByBroker) as e:
        channel.queue_declare("y")
    assert reply_code_of(e) == 406


# ----- durability -----

def test_persistent_messages_survive_a_crash(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("durable-q", durable=True)
    for i in range(100):
        ch.basic_publish("", "durable-q", str(i).encode(), PERSISTENT)
    broker.kill()
    broker.start()
    ch = broker.connect().channel()
    m, _, body = ch.basic_get("durable-q", auto_ack=True)
    assert body == b"0" and m.redelivered
    assert ch.queue_declare("durable-q", passive=True).method.message_count == 99


# ----- users, vhosts, permissions -----

CONFIG = """
vhosts = ["apps"]

[[users]]
name = "app"
password = "s3cret"

[[permissions]]
user = "app"
vhost = "apps"
configure = "^app\\\\."
write = "^(app\\\\..*|amq\\\\.default)$"
read = "^app\\\\."
"""


@pytest.fixture
def configured(tmp_path):
    from conftest import Broker
    import os

    config = tmp_path / "warren.toml"
    config.write_text(CONFIG)
    b = Broker(os.environ["WARREN_BIN"], tmp_path / "data", tmp_path / "warren.log", ["--config", str(config)])
    b.start()
    yield b
    b.kill()


def test_permissions_are_enforced(configured):
    creds = pika.PlainCredentials("app", "s3cret")
    conn = configured.connect(credentials=creds, virtual_host="apps")
    ch = conn.channel()
    ch.queue_declare("app.jobs")
    ch.basic_publish("", "app.jobs", b"allowed")
    assert ch.basic_get("app.jobs", auto_ack=True)[2] == b"allowed"
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare("other")
    assert reply_code_of(e) == 403
    ch = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.exchange_declare("app.x", "direct", arguments={"alternate-exchange": "forbidden"})
    assert reply_code_of(e) == 403
    conn.close()
    # guest has no permission in "apps".
    with pytest.raises(AMQPConnectionError) as e:
        configured.connect(virtual_host="apps")
    assert "530" in repr(e.value) or "NOT_ALLOWED" in repr(e.value)
    # and app has none in "/".
    with pytest.raises(AMQPConnectionError):
        configured.connect(credentials=creds)


def test_configured_users_survive_restart(configured):
    configured.kill()
    configured.start()
    conn = configured.connect(credentials=pika.PlainCredentials("app", "s3cret"), virtual_host="apps")
    conn.channel().queue_declare("app.again")
    conn.close()


def test_auto_delete_exchange_goes_with_its_last_binding(channel):
    channel.exchange_declare("fleeting", "fanout", auto_delete=True)
    channel.queue_declare("fq")
    channel.queue_bind("fq", "fleeting")
    channel.exchange_declare("fleeting", "fanout", passive=True, auto_delete=True)
    channel.queue_unbind("fq", "fleeting")
    with pytest.raises(ChannelClosedByBroker) as e:
        channel.exchange_declare("fleeting", "fanout", passive=True)
    assert reply_code_of(e) == 404


def test_exclusive_consumer_locks_out_others(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare("solo")
    ch.basic_consume("solo", lambda *a: None, exclusive=True)
    other = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        other.basic_consume("solo", lambda *a: None)
    assert reply_code_of(e) == 403
    conn.close()


def test_transient_queue_and_messages_do_not_survive_restart(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare("durable-transient", durable=True)
    ch.basic_publish("", "durable-transient", b"transient body")
    conn.close()
    broker.kill()
    broker.start()
    ch = broker.connect().channel()
    assert ch.queue_declare("durable-transient", passive=True).method.message_count == 0


def non_loopback_address():
    """This machine's address on a non-loopback interface, if it has one."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.254", 9))  # no packet is sent for a UDP connect
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


def test_guest_is_refused_from_a_non_loopback_address(tmp_path):
    import os
    from conftest import Broker

    address = non_loopback_address()
    if address is None:
        pytest.skip("no non-loopback interface on this machine")
    b = Broker(os.environ["WARREN_BIN"], tmp_path / "data", tmp_path / "warren.log", listen="0.0.0.0:0")
    b.start()
    try:
        with pytest.raises(AMQPConnectionError) as e:
            pika.BlockingConnection(pika.ConnectionParameters(address, b.port))
        assert "can only connect via localhost" in repr(e.value)
        # The same user from loopback is fine.
        pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", b.port)).close()
    finally:
        b.kill()


def test_transactional_acks_settle_once_and_return_on_close(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare("txq")
    ch.basic_publish("", "txq", b"one")
    ch.tx_select()
    m, _, _ = ch.basic_get("txq")
    ch.basic_ack(m.delivery_tag)
    ch.basic_ack(m.delivery_tag)  # already settled inside this transaction
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.tx_commit()
    assert reply_code_of(e) == 406
    # The channel died with an uncommitted ack: the message is back, redelivered.
    m, _, body = conn.channel().basic_get("txq", auto_ack=True)
    assert body == b"one" and m.redelivered
    conn.close()


def test_synced_acks_are_never_redelivered(broker):
    """Guarantee 2: once the log holding an ack is synced (SIGTERM syncs it), the acked message
    never comes back; the unacked ones all do, in order."""
    conn = broker.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("acked", durable=True)
    for i in range(10):
        ch.basic_publish("", "acked", str(i).encode(), PERSISTENT)
    for _ in range(5):
        m, _, _ = ch.basic_get("acked")
        ch.basic_ack(m.delivery_tag)
    ch.queue_declare("acked", durable=True, passive=True)  # a round trip after the acks
    conn.close()
    broker.terminate()
    broker.start()
    ch = broker.connect().channel()
    assert get_all(ch, "acked") == [str(i).encode() for i in range(5, 10)]
