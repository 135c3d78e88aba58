"""`SPEC`: the pyiso8583 specification of our host interface.

A copy of `iso8583.specs.default` (ASCII numerics and lengths, binary bitmaps, PIN block, ICC data and
MAC) with the changes below, each marked `# changed:` where it is made.
"""

from __future__ import annotations

import copy
from typing import Any

from iso8583.specs import default as _default

SPEC: dict[str, dict[str, Any]] = copy.deepcopy(dict(_default))

# changed: DE 53 carries the DUKPT key serial number of the PIN block in DE 52 (10 bytes for TDES DUKPT,
# 12 for AES DUKPT) instead of the fixed 16-digit security control information of ISO 8583:1987.
SPEC["53"] = {"data_enc": "b", "len_enc": "ascii", "len_type": 2, "max_len": 12, "desc": "Key Serial Number (DUKPT)"}

# changed: DE 110 carries an ISO 9564 format-4 (AES) PIN block, which does not fit the 8 bytes of DE 52.
SPEC["110"] = {"data_enc": "b", "len_enc": "ascii", "len_type": 3, "max_len": 16, "desc": "PIN Block, AES (ISO 9564 format 4)"}

# Numeric fields whose content the codec checks after decoding (pyiso8583 checks lengths, not digits).
NUMERIC_FIELDS: tuple[str, ...] = (
    "3", "4", "7", "11", "12", "13", "14", "15", "18", "22", "23", "32", "49", "50", "70",
    "74", "75", "76", "77", "86", "87", "88", "89",
)
