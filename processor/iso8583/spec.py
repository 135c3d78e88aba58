"""`SPEC`: the pyiso8583 specification of our host interface.

A copy of `iso8583.specs.default` (ASCII numerics and lengths, binary bitmaps, PIN block, ICC data and
MAC) with the changes below, each marked `# changed:` where it is made. `field_format` states a field's
encoding in the notation of the README's field table, which a test keeps equal to this module.
"""

from __future__ import annotations

import copy
from typing import Any

from iso8583.specs import default as _default

SPEC: dict[str, dict[str, Any]] = copy.deepcopy(dict(_default))

# changed: DE 53 carries the 10-byte TDES DUKPT key serial number of the PIN block in DE 52. ISO 8583:1987
# defines DE 53 as n16, which cannot hold an 80-bit KSN (20 hex digits); we use the ISO 8583:1993 form
# (binary, LLVAR), as ISO 13492 places key-management data there, capped at the one length we accept.
SPEC["53"] = {"data_enc": "b", "len_enc": "ascii", "len_type": 2, "max_len": 10, "desc": "Key Serial Number (DUKPT)"}

# DE 55 keeps the default, the ISO 8583:1993 form (b..255, LLLVAR), where every card scheme carries EMV data
# even in its 1987-based messages; 1987 itself reserves DE 55 for ISO use.

KSN_BYTES = 10

# Fields a request must not carry: the engine has no use for them, and carrying a secret it would ignore is
# worse than a refusal. DE 110 (reserved for ISO use) once held an AES PIN block nobody verified.
REFUSED_FIELDS: dict[str, str] = {
    "110": "field 110 (reserved for ISO use) is not accepted: PIN blocks go in DE 52 (ISO 9564 format 0)",
}

# Numeric fields whose content the codec checks after decoding (pyiso8583 checks lengths, not digits).
NUMERIC_FIELDS: tuple[str, ...] = (
    "2", "3", "4", "7", "11", "12", "13", "14", "15", "18", "22", "23", "32", "49", "50", "70",
    "74", "75", "76", "77", "86", "87", "88", "89", "90",
)


def field_format(de: str) -> str:
    """A field's encoding as the README writes it: `n 6`, `ans ..37, LL`, `b 8 bytes`, `b ..255 bytes, LLL`.

    `n` is ASCII digits, `ans` ASCII text, `b` raw bytes; `LL`/`LLL` is a length prefix of 2 or 3 ASCII
    digits that counts what follows (characters for `n`/`ans`, bytes for `b`).
    """
    spec = SPEC[de]
    if spec["data_enc"] == "b":
        kind, unit = "b", " bytes"
    else:
        kind, unit = ("n" if de in NUMERIC_FIELDS else "ans"), ""
    if spec["len_type"] == 0:
        return f"{kind} {spec['max_len']}{unit}"
    return f"{kind} ..{spec['max_len']}{unit}, {'L' * spec['len_type']}"
