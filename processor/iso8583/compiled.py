"""A fast path for the ISO 8583 codec, compiled from `SPEC` itself (the same data, not a second table).

pyiso8583 stays the reference: whatever this path is not sure of (a malformed message, a length prefix
that is not plain digits, a tertiary bitmap, a value that is not a string, an encoding it does not
compile) it declines by returning None, and the caller runs pyiso8583, whose result or error then stands.
So an error message always comes from pyiso8583, and a message both accept decodes to the same dict
(tests/test_iso8583_compiled.py checks both on random and corrupted messages with hypothesis).

What it compiles, per field: the length prefix's width (0 for fixed), the maximum (or fixed) length,
and whether the data is binary (hex in the dict) or ASCII text.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from typing import Any

# (dict key, length-prefix digits, max or fixed length, binary) per field number; None where not compiled.
FieldPlan = tuple[str, int, int, bool]

# For each byte value, the positions (1-8, left to right) of its set bits: bitmaps read a byte at a time.
_BITS = tuple(tuple(bit for bit in range(1, 9) if byte >> (8 - bit) & 1) for byte in range(256))


def _plan(spec: Mapping[str, Any], key: str) -> FieldPlan | None:
    field = spec.get(key)
    if field is None or field.get("len_count", "bytes") != "bytes":
        return None
    binary = field["data_enc"] == "b"
    if not binary and field["data_enc"] != "ascii":
        return None
    if field["len_type"] and field["len_enc"] != "ascii":
        return None
    if not field["len_type"] and field["max_len"] <= 0:
        return None
    return (key, int(field["len_type"]), int(field["max_len"]), binary)


class CompiledCodec:
    """decode/encode for one pyiso8583 spec with ASCII type, binary bitmaps and no header; None = ask pyiso8583."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        if spec["h"]["max_len"] > 0 or spec["t"]["data_enc"] != "ascii" or spec["p"]["data_enc"] != "b" or spec["1"]["data_enc"] != "b":
            raise ValueError("the compiled codec takes a spec without header, with an ASCII MTI and binary bitmaps")
        self.plans: list[FieldPlan | None] = [None] * 129
        for number in range(2, 129):
            if number != 65:
                self.plans[number] = _plan(spec, str(number))
        self._keys = {plan[0]: number for number, plan in enumerate(self.plans) if plan is not None}

    # ------------------------------------------------------------ decode

    def decode(self, raw: bytes) -> dict[str, Any] | None:
        """The message as pyiso8583 decodes it, or None when this path declines (pyiso8583 then decides)."""
        spans = self._walk(raw)
        if spans is None:
            return None
        out: dict[str, Any] = {"t": spans.pop("t"), "p": spans.pop("p")}
        if "1" in spans:
            out["1"] = spans.pop("1")
        plans = self.plans
        for number, (start, end) in spans.items():
            plan = plans[number]  # type: ignore[index]
            data = raw[start:end]
            if plan[3]:  # type: ignore[index]
                out[plan[0]] = data.hex().upper()  # type: ignore[index]
            else:
                try:
                    out[plan[0]] = data.decode("ascii")  # type: ignore[index]
                except UnicodeDecodeError:
                    return None
        return out

    def spans(self, raw: bytes) -> dict[str, tuple[int, int]] | None:
        """Where each field's data (after its length prefix) sits in `raw`, by dict key; None when declined."""
        walked = self._walk(raw)
        if walked is None:
            return None
        return {self.plans[k][0] if isinstance(k, int) else k: v for k, v in walked.items() if isinstance(v, tuple)}  # type: ignore[index]

    def _walk(self, raw: bytes) -> dict[Any, Any] | None:
        # The MTI and bitmaps as their dict values, each field number as (start, end) of its data.
        if type(raw) is not bytes and type(raw) is not bytearray:
            return None
        n = len(raw)
        if n < 12:
            return None
        try:
            mti = raw[:4].decode("ascii")
        except UnicodeDecodeError:
            return None
        primary = raw[4:12]
        found: dict[Any, Any] = {"t": mti, "p": primary.hex().upper()}
        numbers = [i * 8 + bit for i, byte in enumerate(primary) if byte for bit in _BITS[byte]]
        idx = 12
        if numbers and numbers[0] == 1:
            if n < 20:
                return None
            secondary = raw[12:20]
            if secondary[0] & 0x80:  # field 65: a tertiary bitmap, left to pyiso8583
                return None
            found["1"] = secondary.hex().upper()
            numbers = numbers[1:] + [64 + i * 8 + bit for i, byte in enumerate(secondary) if byte for bit in _BITS[byte]]
            idx = 20
        plans = self.plans
        for number in numbers:
            plan = plans[number]
            if plan is None:
                return None
            _, len_type, max_len, _ = plan
            if len_type:
                prefix = raw[idx : idx + len_type]
                # Only plain digits here: pyiso8583's int() also takes signs, spaces and underscores.
                if len(prefix) != len_type or not prefix.isdigit():
                    return None
                length = int(prefix)
                if length > max_len:
                    return None
                idx += len_type
            else:
                length = max_len
            end = idx + length
            if end > n:
                return None
            found[number] = (idx, end)
            idx = end
        if idx != n:
            return None
        return found

    # ------------------------------------------------------------ encode

    def encode(self, fields: Mapping[str, Any]) -> bytes | None:
        """The message as pyiso8583 encodes it, or None when this path declines (pyiso8583 then decides)."""
        mti = fields.get("t")
        if type(mti) is not str or len(mti) != 4 or not mti.isascii():
            return None
        keys = self._keys
        numbers = []
        for key in fields:
            number = keys.get(key) if type(key) is str else None
            if number is None:
                # "t", "p" and "1" are rebuilt; any other key that pyiso8583 would read as a field (a number
                # outside what is compiled, "065", "١") goes to it.
                if type(key) is not str or (key.isnumeric() and key != "1"):
                    return None
                continue
            numbers.append(number)
        numbers.sort()
        primary = 0
        secondary = 0
        for number in numbers:
            if number > 64:
                secondary |= 1 << (128 - number)
            else:
                primary |= 1 << (64 - number)
        parts = [mti.encode("ascii")]
        if secondary:
            primary |= 1 << 63
            parts += [primary.to_bytes(8, "big"), secondary.to_bytes(8, "big")]
        else:
            parts.append(primary.to_bytes(8, "big"))
        plans = self.plans
        for number in numbers:
            key, len_type, max_len, binary = plans[number]  # type: ignore[misc]
            value = fields[key]
            if type(value) is not str:
                return None
            if binary:
                try:
                    data = binascii.a2b_hex(value)
                except (binascii.Error, ValueError):
                    return None
            else:
                if not value.isascii():
                    return None
                data = value.encode("ascii")
            length = len(data)
            if len_type:
                if length > max_len:
                    return None
                parts.append(b"%0*d" % (len_type, length))
            elif length != max_len:
                return None
            parts.append(data)
        return b"".join(parts)
