"""ISO 4217: alpha code, numeric code and minor-unit exponent of the currencies we hold accounts in."""

from __future__ import annotations

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
