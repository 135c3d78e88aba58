"""The outbox: events written in the transaction of the change they describe, and readers of it.

    write_events(conn, [cardholder_event(7, "payment.received", {...}, now)])   # inside the change's transaction
    events = read_after(conn, position, 500)                                   # a consumer, from its position
    hub = EventHub(store); await hub.start(); sub = hub.subscribe(7)           # the live feed of one process
"""

from processor.events.feed import EventHub, Subscription
from processor.events.outbox import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    Deduplicator,
    Event,
    advance_consumer,
    cardholder_event,
    consumer_position,
    last_id,
    operator_event,
    read_after,
    read_for,
    write_events,
)

__all__ = [
    "EVENT_TYPES",
    "SCHEMA_VERSION",
    "Deduplicator",
    "Event",
    "EventHub",
    "Subscription",
    "advance_consumer",
    "cardholder_event",
    "consumer_position",
    "last_id",
    "operator_event",
    "read_after",
    "read_for",
    "write_events",
]
