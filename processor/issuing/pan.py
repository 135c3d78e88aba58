"""Card numbers: Luhn check digits, PAN generation inside a BIN, surrogate tokens."""

from __future__ import annotations

import secrets

# ISO/IEC 7812 major industry identifier 9 is for national use and no card scheme issues in it,
# so surrogates drawn from it can never be mistaken for (or collide with) a real card number.
SURROGATE_PREFIX = "99"


def luhn_check_digit(partial: str) -> str:
    """Check digit to append to `partial` (digits only) so that the whole number passes Luhn."""
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = ord(ch) - 48
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    """True when `number` is all digits and its last digit is its Luhn check digit."""
    return len(number) >= 2 and number.isdigit() and luhn_check_digit(number[:-1]) == number[-1]


def generate_pan(bin_prefix: str, length: int = 16) -> str:
    """A random Luhn-valid PAN of `length` digits starting with `bin_prefix` (6 or 8 digits)."""
    if not bin_prefix.isdigit() or not 6 <= len(bin_prefix) <= 11:
        raise ValueError("BIN must be 6 to 11 digits")
    if not 13 <= length <= 19 or length <= len(bin_prefix) + 1:
        raise ValueError("PAN length must be 13 to 19 and longer than the BIN")
    body = bin_prefix + "".join(secrets.choice("0123456789") for _ in range(length - len(bin_prefix) - 1))
    return body + luhn_check_digit(body)


def surrogate_for(pan: str) -> str:
    """A random Luhn-valid surrogate of the PAN's length that keeps its last four digits.

    The digit before the last four is chosen so the whole surrogate passes Luhn (the last digit is fixed
    because it is one of the four kept digits).
    """
    if not pan.isdigit() or not 13 <= len(pan) <= 19:
        raise ValueError("PAN must be 13 to 19 digits")
    last4 = pan[-4:]
    free = len(pan) - len(SURROGATE_PREFIX) - 4 - 1
    head = SURROGATE_PREFIX + "".join(secrets.choice("0123456789") for _ in range(free))
    for d in "0123456789":
        candidate = head + d + last4
        if luhn_valid(candidate):
            return candidate
    raise AssertionError("one digit always completes a Luhn number")


def mask_pan(pan: str | None) -> str:
    """476173******0010: first six and last four digits; anything short is masked entirely."""
    if not pan:
        return "-"
    if len(pan) < 13:
        return "*" * len(pan)
    return f"{pan[:6]}{'*' * (len(pan) - 10)}{pan[-4:]}"
