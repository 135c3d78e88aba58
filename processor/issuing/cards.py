"""Card issuance: a new PAN with its security values, tokenized at once so only the HSM ever sees it again."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from processor.errors import InvalidRequest
from processor.issuing.keys import IssuerKeys
from processor.issuing.pan import generate_pan, surrogate_for
from processor.iso8583 import build_track2
from processor.ledger import NewCard

DEFAULT_BIN = "476173"
PVKI = 1
PIN_TRY_LIMIT = 3
SERVICE_CODE_CHIP = "201"  # international, integrated circuit card; normal authorization; no restrictions
SERVICE_CODE_MAGSTRIPE = "101"
CVV2_SERVICE_CODE = "000"
ICVV_SERVICE_CODE = "999"


@dataclass(frozen=True, slots=True)
class IssuedCard:
    """What a card carrier shows once (and the card bureau gets for the chip): none of it is kept after this."""

    id: int
    account_id: int
    pan: str
    token: str
    last4: str
    expiry: str
    service_code: str
    track2: str
    chip_track2: str | None  # None for a magstripe-only card
    cvv2: str
    psn: str
    status: str
    pin_method: str | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def pin_validation_data(pan: str) -> str:
    """IBM 3624 validation data: the PAN's 11 digits before the check digit, padded to 16 with 'F'."""
    return pan[:-1][-11:].ljust(16, "F")


def check_pin_format(pin: str) -> None:
    """Refuse, with a message that does not repeat it, a PIN that is not 4 to 12 digits."""
    if not pin.isdigit() or not 4 <= len(pin) <= 12:
        raise InvalidRequest("PIN must be 4 to 12 digits")


def expiry_after(years: int, today: dt.date) -> str:
    """YYMM of the month `years` after today (cards are valid through the end of that month)."""
    return f"{(today.year + years) % 100:02d}{today.month:02d}"


async def pin_verification_for(hsm: Any, keys: IssuerKeys, pan: str, pin: str) -> tuple[str, str]:
    """(method, value): a Visa PVV for 4-digit PINs, an IBM 3624 offset for longer ones."""
    check_pin_format(pin)
    if len(pin) == 4:
        return "pvv", await hsm.generate_pin_verification(pin, pan, keys.pvk, "pvv", pvki=PVKI)
    value = await hsm.generate_pin_verification(
        pin, pan, keys.pvk, "ibm3624", validation_data=pin_validation_data(pan)
    )
    return "ibm3624", value


async def issue_card(
    store: Any,
    hsm: Any,
    keys: IssuerKeys,
    *,
    account_id: int,
    pin: str | None,
    bin_prefix: str = DEFAULT_BIN,
    chip: bool = True,
    product: str = "debit",
    validity_years: int = 4,
    active: bool = True,
    psn: str = "00",
    today: dt.date | None = None,
) -> IssuedCard:
    """Issue a card on an account: PAN, expiry, CVV1/CVV2/iCVV, track 2, PIN verification data, vault entry."""
    if pin is not None:
        check_pin_format(pin)
    await store.account_view(account_id)  # raises when the account does not exist
    today = today or dt.datetime.now(dt.UTC).date()
    expiry = expiry_after(validity_years, today)
    service_code = SERVICE_CODE_CHIP if chip else SERVICE_CODE_MAGSTRIPE
    for _ in range(8):  # a random PAN that is already issued is simply drawn again
        pan = generate_pan(bin_prefix)
        vault = await hsm.tokenize_pan(pan)
        if await store.find_card([vault.fingerprint]) is not None:
            continue
        cvv1 = await hsm.generate_cvv(keys.cvk, pan, expiry, service_code)
        cvv2 = await hsm.generate_cvv(keys.cvk, pan, expiry, CVV2_SERVICE_CODE)
        icvv = await hsm.generate_cvv(keys.cvk, pan, expiry, ICVV_SERVICE_CODE)
        pin_method, pin_value = (None, None)
        if pin is not None:
            pin_method, pin_value = await pin_verification_for(hsm, keys, pan, pin)
        pvv_on_track = pin_value if pin_method == "pvv" else "0000"
        track2 = build_track2(pan, expiry, service_code, cvv1, discretionary=f"{PVKI}{pvv_on_track}")
        # The chip carries the same track with the iCVV instead of the CVV, so a skimmed chip track
        # cannot be replayed on a magnetic stripe.
        chip_track2 = build_track2(pan, expiry, service_code, icvv, discretionary=f"{PVKI}{pvv_on_track}") if chip else None
        token = surrogate_for(pan)
        new = NewCard(
            account_id=account_id,
            status="active" if active else "inactive",
            product=product,
            token=token,
            last4=pan[-4:],
            pan_fingerprint=vault.fingerprint,
            fingerprint_version=vault.fingerprint_version,
            sealed_pan=vault.sealed_pan,
            data_key_version=vault.data_key_version,
            expiry=expiry,
            service_code=service_code,
            psn=psn,
            pin_method=pin_method,
            pin_value=pin_value,
        )
        card_id = await store.create_card(new)
        return IssuedCard(
            id=card_id,
            account_id=account_id,
            pan=pan,
            token=token,
            last4=pan[-4:],
            expiry=expiry,
            service_code=service_code,
            track2=track2,
            chip_track2=chip_track2,
            cvv2=cvv2,
            psn=psn,
            status=new.status,
            pin_method=pin_method,
        )
    raise InvalidRequest(f"could not draw a free card number in BIN {bin_prefix}: the range is nearly full")
