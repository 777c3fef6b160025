"""Shared by the examples: connecting, and pumping a connection until a condition holds."""
import os
import time

import pika

URL = os.environ.get("WARREN_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")


def connect():
    return pika.BlockingConnection(pika.URLParameters(URL))


def pump_until(connection, condition, timeout=10):
    """Processes I/O on `connection` until `condition()` is true (or fails after `timeout`)."""
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "condition not reached in time"
        connection.process_data_events(time_limit=0.05)
