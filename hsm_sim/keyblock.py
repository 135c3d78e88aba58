"""Key types and TR-31 (ANSI X9.143) key blocks: what a key may be, and how it travels.

Every key in the HSM has a type (ZMK, CVK, BDK, ...) that fixes its TR-31 key usage, the algorithms
and lengths it may have, and the modes of use it may carry. A key travels only as a TR-31 block: under
the LMK at rest, under a ZMK or KEK between parties. The header of the block, authenticated by the
block's MAC, says what the key may do:

- mode of use: B both ways (encrypt and decrypt, wrap and unwrap), C both ways (generate and verify),
  E encrypt/wrap only, D decrypt/unwrap only, G generate only, V verify only, X derivation only,
  N no restriction beyond the usage;
- exportability: E exportable under a trusted key, S exportable under any key, N never exportable.

Blocks are versions D (AES key derivation binding, under an AES key-block protection key) and B or C
(TDES, under a TDES one). Version A, the deprecated variant binding, is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from psec import tr31

from hsm_sim.errors import EXPORT_REFUSED, INVALID_INPUT, KEY_ALGORITHM_MISMATCH, KEY_TYPE_NOT_ALLOWED, HsmError

# A use is what one command does with one key; a mode of use grants a set of uses.
ENCRYPT, DECRYPT, GENERATE, VERIFY, DERIVE = "E", "D", "G", "V", "X"
MODE_USES: dict[str, frozenset[str]] = {
    "B": frozenset({ENCRYPT, DECRYPT}),
    "C": frozenset({GENERATE, VERIFY}),
    "D": frozenset({DECRYPT}),
    "E": frozenset({ENCRYPT}),
    "G": frozenset({GENERATE}),
    "V": frozenset({VERIFY}),
    "X": frozenset({DERIVE}),
    "N": frozenset({ENCRYPT, DECRYPT, GENERATE, VERIFY, DERIVE}),
}
EXPORTABILITY = ("E", "S", "N")
ORIGINS = ("generated", "components", "imported")
# The proprietary optional block (numeric IDs are proprietary in TR-31) in which a key's LMK block records
# how the key came into the HSM; it is covered by the block's MAC like the rest of the header.
ORIGIN_BLOCK = "10"

TR31_ALGORITHM = {"TDES": "T", "AES": "A", "HMAC": "H"}
ALGORITHM_OF = {letter: name for name, letter in TR31_ALGORITHM.items()}
# NIST SP 800-57 security strength in bits, by algorithm and key length.
_STRENGTH = {("TDES", 128): 80, ("TDES", 192): 112, ("AES", 128): 128, ("AES", 192): 192, ("AES", 256): 256, ("HMAC", 256): 256}


@dataclass(frozen=True, slots=True)
class KeyType:
    """What a key type is: its TR-31 usage and default mode, the modes it accepts, its lengths in bits."""

    usage: str
    mode: str
    modes: tuple[str, ...]
    bits: dict[str, tuple[int, ...]]  # algorithm -> allowed lengths; the first is the default

    def default_bits(self, algorithm: str) -> int:
        return self.bits[algorithm][0]


_KEK_BITS = {"TDES": (128, 192), "AES": (256, 128, 192)}
KEY_TYPES: dict[str, KeyType] = {
    "ZMK": KeyType("K0", "B", ("B", "D", "E", "N"), _KEK_BITS),
    "KEK": KeyType("K0", "B", ("B", "D", "E", "N"), _KEK_BITS),
    "ZPK": KeyType("P0", "B", ("B", "D", "E", "N"), _KEK_BITS),
    "TPK": KeyType("P0", "B", ("B", "D", "E", "N"), _KEK_BITS),
    "PVK": KeyType("V2", "C", ("C", "G", "V", "N"), {"TDES": (128,)}),
    "CVK": KeyType("C0", "C", ("C", "G", "V", "N"), {"TDES": (128,)}),
    # X9.24-3 terminals carry AES-128 initial keys in practice, so an AES BDK is AES-128 unless asked.
    "BDK": KeyType("B0", "X", ("X", "N"), {"TDES": (128,), "AES": (128, 192, 256)}),
    "IMK-AC": KeyType("E0", "X", ("X", "N"), {"TDES": (128,)}),
    "TAK": KeyType("M3", "C", ("C", "G", "V", "N"), {"TDES": (128,), "AES": (256, 128, 192)}),
    "ZAK": KeyType("M3", "C", ("C", "G", "V", "N"), {"TDES": (128,), "AES": (256, 128, 192)}),
    "DEK": KeyType("D0", "B", ("B", "D", "E", "N"), {"AES": (256,)}),
    "FPK": KeyType("M7", "C", ("C", "G", "V", "N"), {"HMAC": (256,)}),
}


KEY_TYPE_NAMES = tuple(KEY_TYPES)


def key_type_spec(key_type: str) -> KeyType:
    spec = KEY_TYPES.get(key_type)
    if spec is None:
        raise HsmError(KEY_TYPE_NOT_ALLOWED, f"unknown key type {key_type!r}; known: {', '.join(KEY_TYPES)}")
    return spec


def check_type(key_type: str, algorithm: str, bits: int | None = None) -> int:
    """The key length in bits, after refusing a type, algorithm or length this HSM does not allow together."""
    spec = key_type_spec(key_type)
    allowed = spec.bits.get(algorithm)
    if allowed is None:
        raise HsmError(KEY_TYPE_NOT_ALLOWED, f"a {key_type} cannot be {algorithm} (allowed: {', '.join(spec.bits)})")
    if bits is None:
        return allowed[0]
    if bits not in allowed:
        sizes = ", ".join(str(b) for b in sorted(allowed))
        raise HsmError(KEY_ALGORITHM_MISMATCH, f"a {algorithm} {key_type} is {sizes} bits long, not {bits}")
    return bits


def strength(algorithm: str, bits: int) -> int:
    """Security strength in bits (2-key TDES 80, 3-key TDES 112, AES and HMAC their length)."""
    return _STRENGTH[(algorithm, bits)]


def check_mode(key_type: str, mode: str, what: str) -> None:
    if mode not in key_type_spec(key_type).modes:
        allowed = ", ".join(key_type_spec(key_type).modes)
        raise HsmError(KEY_TYPE_NOT_ALLOWED, f"{what}: a {key_type} cannot have mode of use {mode!r} (allowed: {allowed})")


def header_for(
    version: str, key_type: str, algorithm: str, mode: str, exportability: str, *, origin: str | None = None
) -> tr31.Header:
    header = tr31.Header(
        version_id=version,
        key_usage=KEY_TYPES[key_type].usage,
        algorithm=TR31_ALGORITHM[algorithm],
        mode_of_use=mode,
        version_num="00",
        exportability=exportability,
    )
    if origin is not None:
        header.blocks[ORIGIN_BLOCK] = origin
    return header


def version_for(kbpk_algorithm: str, requested: str | None, what: str) -> str:
    """The block version a key-block protection key of this algorithm goes with: D for AES, B (or C) for TDES."""
    allowed = ("D",) if kbpk_algorithm == "AES" else ("B", "C")
    version = requested or allowed[0]
    if version not in allowed:
        raise HsmError(
            KEY_ALGORITHM_MISMATCH,
            f"{what}: a {kbpk_algorithm} key-block protection key goes with TR-31 version {' or '.join(allowed)}, not {version!r}",
        )
    return version


def wrap(kbpk: bytes, key: bytes, header: tr31.Header) -> str:
    """The key as a TR-31 block under `kbpk`; the block's length does not reveal the key's."""
    return tr31.KeyBlock(kbpk, header).wrap(key)


def unwrap(kbpk: bytes, kbpk_algorithm: str, block: str, what: str) -> tuple[tr31.Header, bytes]:
    """Header and key of a TR-31 block, after checking its version suits the protection key and its MAC."""
    if not isinstance(block, str) or not block.isascii() or len(block) < 16:
        raise HsmError(INVALID_INPUT, f"{what}: a TR-31 key block is at least 16 ASCII characters")
    if block[0] == "A":
        raise HsmError(INVALID_INPUT, f"{what}: TR-31 version A (variant binding) is deprecated; send version B, C or D")
    if block[0] not in ("B", "C", "D"):
        raise HsmError(INVALID_INPUT, f"{what}: TR-31 version {block[0]!r} is not supported (B, C and D are)")
    version_for(kbpk_algorithm, block[0], what)
    try:
        header, key = tr31.unwrap(kbpk, block)
    except (tr31.KeyBlockError, tr31.HeaderError) as exc:
        reason = "its MAC does not verify under this key" if "MAC" in str(exc) else str(exc)
        raise HsmError(INVALID_INPUT, f"{what}: key block does not unwrap: {reason}") from None
    return header, key


def algorithm_of(header: tr31.Header) -> str:
    """The block's algorithm, refusing those this HSM does not hold (single DES, RSA, EC...)."""
    algorithm = ALGORITHM_OF.get(header.algorithm)
    if algorithm is None:
        raise HsmError(KEY_ALGORITHM_MISMATCH, f"key block algorithm {header.algorithm!r} is not accepted (T, A or H)")
    return algorithm


def check_protection(algorithm: str, bits: int, kbpk_algorithm: str, kbpk_bits: int, what: str) -> None:
    """Refuse to carry a key under a weaker key (SP 800-57: the protecting key is at least as strong)."""
    if strength(algorithm, bits) > strength(kbpk_algorithm, kbpk_bits):
        raise HsmError(
            EXPORT_REFUSED,
            f"{what}: a {bits}-bit {algorithm} key may not travel under a weaker {kbpk_bits}-bit {kbpk_algorithm} key",
        )
