"""A cardholder's card actions: freeze and unfreeze, report lost (with a replacement the wallet follows), set the PIN."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select, update

from processor.issuing import cards as issuing_cards
from processor.issuing import config as issuing_config
from processor.api import idempotency as idem
from processor.api.errors import ApiError
from processor.api.views import card_json, own_card_row
from processor.issuing.cards import change_status
from processor.tokenization.tokens import repoint_tokens
from processor.ledger.models import cards, utcnow

c = cards.c
PIN_TRY_LIMIT = 3
USABLE_FOR_PIN = ("active", "frozen", "inactive")


def freeze(conn: Connection, me: int, card_id: int, frozen: bool) -> tuple[int, dict[str, Any]]:
    """Freeze an active card, or unfreeze a frozen one; asking for the state it is in already changes nothing."""
    row = own_card_row(conn, me, card_id)
    target, source = ("frozen", "active") if frozen else ("active", "frozen")
    if row.status == target:
        return 200, card_json(row)
    if row.status != source:
        raise ApiError("invalid_transition", f"card {card_id} is {row.status}: only an {source} card can be {'frozen' if frozen else 'unfrozen'}")
    change_status(conn, card_id, target)
    return 200, card_json(own_card_row(conn, me, card_id))


def mark_lost(conn: Connection, me: int, card_id: int) -> Any:
    """The card as lost (an event when it becomes so); refuses cards that cannot be reported lost."""
    row = own_card_row(conn, me, card_id)
    if row.status in ("active", "frozen"):
        change_status(conn, card_id, "lost")
        return own_card_row(conn, me, card_id)
    if row.status == "lost":
        return row
    raise ApiError("card_not_usable", f"card {card_id} is {row.status} and cannot be reported lost")


def finish_replacement(conn: Connection, me: int, old_id: int, new_id: int) -> list[int]:
    """Point the lost card at its replacement, move the wallet tokens to it, and activate it."""
    own_card_row(conn, me, old_id)
    claimed = conn.execute(
        update(cards).where(c.id == old_id, c.replaced_by_card_id.is_(None)).values(replaced_by_card_id=new_id, updated_at=utcnow())
    ).rowcount
    if not claimed:
        raise ApiError("conflict", f"card {old_id} was replaced meanwhile")
    moved = repoint_tokens(conn, old_id, new_id)
    change_status(conn, new_id, "active", {"replaces_card_id": old_id, "repointed_token_ids": moved})
    return moved


def lost_answer(conn: Connection, me: int, old_id: int) -> dict[str, Any]:
    from processor.ledger.models import payment_tokens

    old = own_card_row(conn, me, old_id)
    new = own_card_row(conn, me, old.replaced_by_card_id)
    ids = [r.id for r in conn.execute(select(payment_tokens.c.id).where(payment_tokens.c.card_id == new.id).order_by(payment_tokens.c.id))]
    return {"card": card_json(old), "replacement": card_json(new), "repointed_token_ids": ids}


async def report_lost(service: Any, me: int, card_id: int) -> idem.Answer:
    """Report a card lost: it is blocked at once, a replacement on the same account is issued, and wallet tokens follow it."""
    from processor.issuing import issue_card
    from processor.issuing.cards import DEFAULT_BIN

    store = service.store
    row = await store.run_write(mark_lost, me, card_id)
    service.hub.notify()
    if row.replaced_by_card_id is None:
        keys = await service.issuer_keys()
        record = await issuing_cards.get(store, card_id)
        new = await issue_card(store, service.hsm, keys, account_id=row.account_id, pin=None,
                               bin_prefix=await issuing_config.issuer_bin(store),
                               chip=record.service_code.startswith("2"), product=record.product, active=False)
        try:
            await store.run_write(finish_replacement, me, card_id, new.id)
        except BaseException:
            await issuing_cards.set_status(store, new.id, "closed")  # an unused replacement must never become usable
            raise
        service.hub.notify()
    return idem.Answer(200, await store.run_query(lost_answer, me, card_id))


def _count_wrong_pin(conn: Connection, card_id: int) -> int:
    return conn.execute(update(cards).where(c.id == card_id).values(pin_tries=c.pin_tries + 1, updated_at=utcnow()).returning(c.pin_tries)).scalar_one()


def _store_pin(conn: Connection, me: int, card_id: int, old_value: str | None, method: str, value: str) -> dict[str, Any]:
    where = [c.id == card_id, c.pin_value.is_(None) if old_value is None else c.pin_value == old_value]
    if not conn.execute(update(cards).where(*where).values(pin_method=method, pin_value=value, pin_tries=0, updated_at=utcnow())).rowcount:
        raise ApiError("conflict", f"card {card_id}'s PIN changed meanwhile")
    return card_json(own_card_row(conn, me, card_id))


async def set_pin(service: Any, me: int, card_id: int, pin: str, current_pin: str | None) -> idem.Answer:
    """Set the PIN (or change it, proving the current one) through the HSM: only its verification value is kept."""
    from processor.issuing import pin_verification_for

    store = service.store
    row = await store.run_query(own_card_row, me, card_id)
    if row.status not in USABLE_FOR_PIN:
        raise ApiError("card_not_usable", f"card {card_id} is {row.status}")
    record = await issuing_cards.get(store, card_id)
    keys = await service.issuer_keys()
    pan = await service.hsm.reveal_pan(record.sealed_pan, record.data_key_version, operator=f"cardholder:{me}",
                                       reason=f"PIN set on card {card_id} in the app")
    if record.pin_method is not None:
        if current_pin is None:
            raise ApiError("invalid_request", "this card has a PIN: give current_pin to change it", details={"fields": ["current_pin"]})
        if record.pin_tries >= PIN_TRY_LIMIT:
            raise ApiError("pin_tries_exceeded", "the card's PIN is blocked after too many wrong tries; ask support to reset it")
        if await pin_verification_for(service.hsm, keys, pan, current_pin) != (record.pin_method, record.pin_value):
            tries = await store.run_write(_count_wrong_pin, card_id)
            if tries >= PIN_TRY_LIMIT:
                raise ApiError("pin_tries_exceeded", "wrong current PIN; the card's PIN is now blocked")
            raise ApiError("wrong_pin", "the current PIN does not verify", details={"tries_left": PIN_TRY_LIMIT - tries})
    method, value = await pin_verification_for(service.hsm, keys, pan, pin)
    del pan
    return idem.Answer(200, await store.run_write(_store_pin, me, card_id, record.pin_value, method, value))


def controls_of(conn: Connection, me: int, card_id: int) -> dict[str, Any]:
    """The card's spending controls (the defaults, nothing limited, when none were set)."""
    from processor.issuing.controls import CardControls, get_controls

    own_card_row(conn, me, card_id)
    return (get_controls(conn, card_id) or CardControls()).as_json()


def set_controls(conn: Connection, me: int, card_id: int, values: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Replace the card's spending controls; the next authorization applies them."""
    from processor.issuing import controls

    row = own_card_row(conn, me, card_id)
    if row.status in ("closed", "lost", "stolen", "expired"):
        raise ApiError("card_not_usable", f"card {card_id} is {row.status}")
    countries = values.get("allowed_countries")
    wanted = controls.CardControls(**{
        **values,
        "blocked_mccs": tuple(values.get("blocked_mccs", ())),
        "blocked_categories": tuple(values.get("blocked_categories", ())),
        "allowed_countries": tuple(countries) if countries is not None else None,
    })
    return 200, controls.set_controls(conn, card_id, wanted).as_json()
