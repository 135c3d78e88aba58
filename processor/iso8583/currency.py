"""ISO 4217: alpha code, numeric code and minor-unit exponent of the currencies we hold accounts in."""

from __future__ import annotations

import re

_TABLE: tuple[tuple[str, str, int], ...] = (
    ("EUR", "978", 2),
    ("USD", "840", 2),
    ("GBP", "826", 2),
    ("CHF", "756", 2),
    ("JPY", "392", 0),
    ("SEK", "752", 2),
    ("DKK", "208", 2),
    ("PLN", "985", 2),
)
_BY_ALPHA = {alpha: (numeric, exponent) for alpha, numeric, exponent in _TABLE}
_BY_NUMERIC = {numeric: alpha for alpha, numeric, _ in _TABLE}


def alpha_for_numeric(numeric: str | None) -> str | None:
    """'978' -> 'EUR'; None for a currency we do not know."""
    return _BY_NUMERIC.get(numeric or "")


def numeric_for_alpha(alpha: str) -> str:
    """'EUR' -> '978'; KeyError names the currency when it is not supported."""
    try:
        return _BY_ALPHA[alpha][0]
    except KeyError:
        raise KeyError(f"currency {alpha} is not supported") from None


def exponent_for_alpha(alpha: str) -> int:
    """Number of minor-unit digits: 2 for EUR, 0 for JPY."""
    try:
        return _BY_ALPHA[alpha][1]
    except KeyError:
        raise KeyError(f"currency {alpha} is not supported") from None


SUPPORTED = tuple(alpha for alpha, _, _ in _TABLE)

# Amounts a person types: digits, optionally a point and at most the currency's decimals. No sign, no
# exponent ("1e3"), no NaN or Infinity, and small enough that every JSON reader keeps the minor units exact.
_AMOUNT = re.compile(r"(\d+)(?:\.(\d*))?")
MAX_AMOUNT_MINOR = 10**15 - 1  # below 2**53


def parse_amount(text: str, exponent: int = 2, *, what: str = "amount") -> int:
    """'100.00' -> 10000 minor units of a currency with `exponent` decimals; ValueError says what to type."""
    match = _AMOUNT.fullmatch(text.strip())
    subject = f"{what} {text!r}" if what else repr(text)
    if match is None:
        example = "12.34" if exponent else "1234"
        raise ValueError(f"{subject} is not an amount: write digits and a point, such as {example}")
    units, decimals = match.group(1), (match.group(2) or "")
    if len(decimals.rstrip("0")) > exponent:
        raise ValueError(f"{subject} has more than {exponent} decimals")
    minor = int(units) * 10**exponent + int((decimals + "0" * exponent)[:exponent] or "0")
    if minor > MAX_AMOUNT_MINOR:
        raise ValueError(f"{subject} is too large: at most {format_minor(MAX_AMOUNT_MINOR, exponent)}")
    return minor


def format_minor(amount_minor: int, exponent: int = 2) -> str:
    """10000 -> '100.00' (exponent 2), with the sign of the amount."""
    sign = "-" if amount_minor < 0 else ""
    units, cents = divmod(abs(amount_minor), 10**exponent)
    return f"{sign}{units}.{cents:0{exponent}d}" if exponent else f"{sign}{units}"


def format_amount(amount_minor: int, alpha: str) -> str:
    """10000, 'EUR' -> '100.00 EUR'."""
    return f"{format_minor(amount_minor, exponent_for_alpha(alpha))} {alpha}"
