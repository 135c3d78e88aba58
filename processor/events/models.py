"""The outbox's tables: events written in the transaction of the change they describe, and consumer positions."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from processor.ledger.models import Base, Id, UtcDateTime, utcnow


class Event(Base):
    """One event. Its id is the event id: on both databases ids become visible in increasing order."""

    __tablename__ = "events"
    __table_args__ = (
        CheckConstraint("audience IN ('cardholder', 'operator')", name="audience"),
        CheckConstraint("(audience = 'cardholder') = (cardholder_id IS NOT NULL)", name="cardholder_events_have_one"),
        Index("ix_events_cardholder_id_id", "cardholder_id", "id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    audience: Mapped[str] = mapped_column(String(16))
    cardholder_id: Mapped[int | None] = mapped_column(ForeignKey("cardholders.id"))
    type: Mapped[str] = mapped_column(String(48))
    # The event's `data` object as JSON text (the envelope is built when the event is read).
    data: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class EventConsumer(Base):
    """How far a consumer (the MQTT publisher, a webhook sender) has handed events on, by event id."""

    __tablename__ = "event_consumers"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Id, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


events = Event.__table__
event_consumers = EventConsumer.__table__
