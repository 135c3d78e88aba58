"""Payment tokens for wallets (EMVCo-style device tokens) and their lifecycle.

A device token is a different 16-digit, Luhn-valid number from the token BIN (config "token.bin"), with its
own expiry and status, standing for a card inside one wallet on one device. The store keeps only the HSM's
keyed fingerprint of it (look-up), the number sealed by the HSM's data key and its last four digits.

Token cryptograms: the token's chip key is the ICC master key the HSM derives from the issuer's IMK-AC and
the TOKEN number with PSN "00" (EMV option A), so nothing per token is stored and
`hsm.verify_arqc(keys.imk_ac, token_pan, TOKEN_PSN, ...)` verifies a token's ARQC.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from hsm_sim import HsmApi
from processor.errors import InvalidRequest
from processor.issuing import cards, config
from processor.issuing.cards import expiry_after, issue_card
from processor.issuing.keys import IssuerKeys
from processor.issuing.pan import generate_pan
from processor.issuing.personalization import BUREAU_KEK_CONFIG, DEFAULT_BUREAU_DIR, personalize_wallet
from processor.ledger import StoreError, StoreInterface
from processor.tokenization import tokens
from processor.tokenization.tokens import NewPaymentToken, TokenView, restriction_list

TOKEN_BIN_CONFIG = "token.bin"
DEFAULT_TOKEN_BIN = "489537"
TOKEN_LENGTH = 16
TOKEN_PSN = "00"
DEFAULT_REQUESTOR_ID = "40010030273"
DEFAULT_ENTRY_MODES = ("07",)  # contactless chip only
DRAWS = 8


async def token_bin(store: StoreInterface) -> str:
    """The configured token BIN; refused when it is not 6-8 digits or overlaps the issuer's card BIN."""
    value = await config.get(store, TOKEN_BIN_CONFIG) or DEFAULT_TOKEN_BIN
    if not (value.isdigit() and 6 <= len(value) <= 8):
        raise InvalidRequest(f"config {TOKEN_BIN_CONFIG} must be 6 to 8 digits, got {value!r}")
    card_bin = await config.issuer_bin(store)
    if value.startswith(card_bin) or card_bin.startswith(value):
        raise InvalidRequest(f"token BIN {value} overlaps the card BIN {card_bin}: tokens need their own range")
    return value


async def provision_token(
    store: StoreInterface,
    hsm: HsmApi,
    keys: IssuerKeys,
    *,
    card_id: int,
    wallet: str,
    device_id: str,
    requestor_id: str = DEFAULT_REQUESTOR_ID,
    entry_modes: Iterable[str] | None = DEFAULT_ENTRY_MODES,
    mcc_allow: Iterable[str] | None = None,
    merchant_allow: Iterable[str] | None = None,
    validity_years: int = 3,
    today: dt.date | None = None,
    wallet_dir: str = DEFAULT_BUREAU_DIR,
) -> dict[str, Any]:
    """Create a device token for an active card; the clear token number is in the answer once, for the wallet."""
    if not wallet.strip() or not device_id.strip():
        raise InvalidRequest("token provision needs a wallet and a device id")
    if not (requestor_id.isdigit() and len(requestor_id) == 11):
        raise InvalidRequest(f"token requestor id must be 11 digits, got {requestor_id!r}")
    if not 1 <= validity_years <= 10:
        raise InvalidRequest(f"token validity must be 1 to 10 years, got {validity_years}")
    modes = restriction_list(entry_modes, "entry modes", 2)
    if modes is None:
        raise InvalidRequest("entry modes: give at least one DE 22 entry mode such as 07")
    mccs = restriction_list(mcc_allow, "MCC list", 4)
    merchants = restriction_list(merchant_allow, "merchant list", None)
    card = await cards.get(store, card_id)  # raises when the card does not exist
    if card.status != "active":
        raise InvalidRequest(f"card {card_id} is {card.status}: only an active card can get a payment token")
    prefix = await token_bin(store)
    expiry = expiry_after(validity_years, today or dt.datetime.now(dt.UTC).date())
    for _ in range(DRAWS):  # a number already in use is simply drawn again
        token_pan = generate_pan(prefix, TOKEN_LENGTH)
        vault = await hsm.tokenize_pan(token_pan)
        if await tokens.find_by_fingerprints(store, [vault.fingerprint]) is not None:
            continue
        new = NewPaymentToken(
            card_id=card_id,
            token_fingerprint=vault.fingerprint,
            fingerprint_version=vault.fingerprint_version,
            sealed_token=vault.sealed_pan,
            data_key_version=vault.data_key_version,
            token_last4=token_pan[-4:],
            token_bin=prefix,
            expiry=expiry,
            requestor_id=requestor_id,
            wallet=wallet,
            device_id=device_id,
            allowed_entry_modes=modes,
            mcc_allow=mccs,
            merchant_allow=merchants,
        )
        try:
            token_id = await tokens.create(store, new)
        except StoreError as exc:
            raise InvalidRequest(str(exc)) from None
        result: dict[str, Any] = {
            "id": token_id,
            "card_id": card_id,
            "token": token_pan,
            "token_last4": token_pan[-4:],
            "expiry": expiry,
            "psn": TOKEN_PSN,
            "status": "active",
            "wallet": wallet,
            "device_id": device_id,
            "requestor_id": requestor_id,
            "entry_modes": list(modes),
            "mcc_allow": list(mccs) if mccs else None,
            "merchant_allow": list(merchants) if merchants else None,
        }
        if await config.get(store, BUREAU_KEK_CONFIG) is not None:
            # The device's token and chip key leave the HSM only sealed under the transport key, in the
            # record format a card bureau gets: the simulated phone opens it like a card.
            _, path = await personalize_wallet(
                store, hsm, keys, token_id=token_id, sealed_token=vault.sealed_pan, data_key_version=vault.data_key_version,
                token_last4=token_pan[-4:], expiry=expiry, directory=wallet_dir,
            )
            result["wallet_file"] = str(path)
        return result
    raise StoreError(f"no free token number in BIN {prefix} after {DRAWS} draws")


async def suspend_token(store: StoreInterface, token_id: int, reason: str = "") -> None:
    """Stop a token at once; it can be resumed."""
    await tokens.set_status(store, token_id, "suspended", reason)


async def resume_token(store: StoreInterface, token_id: int, reason: str = "") -> None:
    await tokens.set_status(store, token_id, "active", reason)


async def delete_token(store: StoreInterface, token_id: int, reason: str = "") -> None:
    """Delete a token for good (a deleted token never comes back)."""
    await tokens.set_status(store, token_id, "deleted", reason)


async def replace_card(
    store: StoreInterface, hsm: HsmApi, keys: IssuerKeys, card_id: int, *, pin: str | None, chip: bool | None = None
) -> dict[str, Any]:
    """Issue a new card on the same account, close the old one and move its wallet tokens to the new card.

    The answer is the new card's carrier data (shown once, as `card issue` shows it) with the replaced card
    id and the ids of the tokens that now point to the new card: the wallet keeps working.
    """
    old = await cards.get(store, card_id)
    if old.replaced_by_card_id is not None:
        raise InvalidRequest(f"card {card_id} was already replaced by card {old.replaced_by_card_id}")
    card = await issue_card(
        store,
        hsm,
        keys,
        account_id=old.account_id,
        pin=pin,
        bin_prefix=await config.issuer_bin(store),
        chip=old.service_code.startswith("2") if chip is None else chip,
        product=old.product,
    )
    try:
        repointed = await tokens.close_and_repoint(store, card_id, card.id)
    except StoreError:
        # Another replacement won the race: the card just issued must not stay usable on its own.
        await cards.set_status(store, card.id, "closed")
        raise
    result = card.as_json()
    result["replaced_card_id"] = card_id
    result["repointed_token_ids"] = repointed
    return result


async def token_details(store: StoreInterface, token_id: int) -> dict[str, Any]:
    """A token as an operator sees it: status, card, restrictions and lifecycle events (never its number)."""
    view = await tokens.get(store, token_id)
    card = await cards.get(store, view.card_id)
    events = await tokens.events(store, token_id)
    return {
        **_view_json(view),
        "card_status": card.status,
        "card_last4": card.last4,
        "events": [{**e, "created_at": e["created_at"].isoformat()} for e in events],
    }


def _view_json(view: TokenView) -> dict[str, Any]:
    return {
        "id": view.id,
        "card_id": view.card_id,
        "status": view.status,
        "token_last4": view.token_last4,
        "token_bin": view.token_bin,
        "expiry": view.expiry,
        "wallet": view.wallet,
        "device_id": view.device_id,
        "requestor_id": view.requestor_id,
        "entry_modes": list(view.allowed_entry_modes),
        "mcc_allow": list(view.mcc_allow) if view.mcc_allow else None,
        "merchant_allow": list(view.merchant_allow) if view.merchant_allow else None,
        "last_atc": view.last_atc,
        "created_at": view.created_at.isoformat(),
    }


async def list_card_tokens(store: StoreInterface, card_id: int) -> list[dict[str, Any]]:
    await cards.get(store, card_id)  # raises when the card does not exist
    return [_view_json(view) for view in await tokens.list_for_card(store, card_id)]
