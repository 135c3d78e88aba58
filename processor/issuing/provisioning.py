"""Bulk provisioning: many cardholders, funded accounts, cards and terminals at once (demo days, load runs)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hsm_sim import HsmApi
from processor.issuing.cardholders import create as create_cardholder
from processor.issuing.cards import issue_card
from processor.issuing.keys import IssuerKeys
from processor.issuing.terminals import add_terminal
from processor.ledger import StoreInterface, accounts


@dataclass
class Population:
    """Issued cards (as `card issue --json` shows them, plus the PIN) and registered terminals."""

    cards: list[dict[str, Any]] = field(default_factory=list)
    terminals: list[dict[str, Any]] = field(default_factory=list)
    merchant_id: str = ""


async def provision(
    store: StoreInterface,
    hsm: HsmApi,
    keys: IssuerKeys,
    *,
    cardholders: int,
    terminals: int,
    deposit_minor: int,
    currency: str = "EUR",
    pin: str = "1234",
    bin_prefix: str = "476173",
    mcc: str = "5411",
    label: str = "load",
    stripe_only_every: int = 2,
    progress: Callable[[str, int, int], None] | None = None,
    key_loader: HsmApi | None = None,
) -> Population:
    """Cardholders with a funded checking account and a card each, and terminals at one merchant.

    Every `stripe_only_every`-th card is a magstripe-only card (service code 101), the kind a terminal
    with a chip reader may swipe; the others carry a chip. 0 issues chip cards only. Cards are issued
    through `hsm`; the terminals' initial keys come through `key_loader` (a networked HSM gives them to
    its key-loading role only), or `hsm` when it is the same. `progress(phase, done, total)` is called after
    each card and each terminal.
    """
    run = secrets.token_hex(3)
    population = Population()
    for i in range(cardholders):
        cardholder_id = await create_cardholder(store, f"{label.title()} Customer {i}", f"{label}-{run}-{i}")
        account_id = await accounts.open_account(
            store, cardholder_id, "checking", currency, deposit_minor=deposit_minor, reference=f"{label} funding"
        )
        stripe_only = stripe_only_every > 0 and i % stripe_only_every == stripe_only_every - 1
        card = await issue_card(
            store, hsm, keys, account_id=account_id, pin=pin, bin_prefix=bin_prefix, chip=not stripe_only
        )
        population.cards.append({**card.as_json(), "pin": pin})
        if progress is not None:
            progress("cards", i + 1, cardholders)
    merchant_id = population.merchant_id = f"{label[:4].upper()}{run.upper()}"[:15]
    for i in range(terminals):
        registered = await add_terminal(
            store,
            key_loader or hsm,
            keys,
            terminal_id=f"T{run[:4].upper()}{i:03d}"[:8],
            merchant_id=merchant_id,
            mcc=mcc,
            name=f"{label.title()} Merchant",
            location="Berlin DE",
        )
        population.terminals.append(registered.as_json())
        if progress is not None:
            progress("terminals", i + 1, terminals)
    return population
