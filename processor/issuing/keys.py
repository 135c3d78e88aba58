"""The issuer's HSM keys: created once by `processor init`, referenced afterwards by KCV from the store."""

from __future__ import annotations

from dataclasses import dataclass, fields
from hsm_sim import HsmApi, all_keys
from processor.errors import ConfigurationError
from processor.issuing import config
from processor.ledger import StoreInterface

# (attribute, HSM key type, algorithm); the store keeps each key's KCV under "key.<attribute>".
ISSUER_KEY_SPECS: tuple[tuple[str, str, str], ...] = (
    ("cvk", "CVK", "TDES"),
    ("pvk", "PVK", "TDES"),
    ("bdk", "BDK", "TDES"),
    ("bdk_aes", "BDK", "AES"),
    ("imk_ac", "IMK-AC", "TDES"),
    ("zmk", "ZMK", "TDES"),
    ("kek", "KEK", "AES"),
    ("tak", "TAK", "TDES"),
    ("dek", "DEK", "AES"),
    ("fpk", "FPK", "AES"),
)


@dataclass(frozen=True, slots=True)
class IssuerKeys:
    """KCVs of the keys the issuer uses; the keys themselves never leave the HSM."""

    cvk: str
    pvk: str
    bdk: str
    bdk_aes: str
    imk_ac: str
    zmk: str
    kek: str
    tak: str
    dek: str
    fpk: str

    def as_dict(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


async def ensure_issuer_keys(store: StoreInterface, hsm: HsmApi) -> IssuerKeys:
    """Create the issuer keys in the HSM the first time; afterwards check the HSM still holds them."""
    found: dict[str, str] = {}
    for name, key_type, algorithm in ISSUER_KEY_SPECS:
        kcv = await config.get(store, f"key.{name}")
        if kcv is None:
            info = await hsm.generate_key(key_type, algorithm)
            kcv = info.kcv
            await config.put(store, f"key.{name}", kcv)
        found[name] = kcv
    keys = IssuerKeys(**found)
    await verify_issuer_keys(keys, hsm)
    return keys


async def load_issuer_keys(store: StoreInterface, hsm: HsmApi | None = None) -> IssuerKeys:
    """The issuer keys recorded by `processor init`; a clear error when init has not run."""
    found: dict[str, str] = {}
    for name, _, _ in ISSUER_KEY_SPECS:
        kcv = await config.get(store, f"key.{name}")
        if kcv is None:
            raise ConfigurationError("the issuer has no keys yet: run `processor init` first")
        found[name] = kcv
    keys = IssuerKeys(**found)
    if hsm is not None:
        await verify_issuer_keys(keys, hsm)
    return keys


async def verify_issuer_keys(keys: IssuerKeys, hsm: HsmApi) -> None:
    """Fail early, naming the key, when the store and the HSM disagree (e.g. a different key-store file)."""
    known = {info.kcv for info in await all_keys(hsm)}
    missing = [name for name, kcv in keys.as_dict().items() if kcv not in known]
    if missing:
        raise ConfigurationError(
            "the HSM does not hold the issuer keys "
            + ", ".join(f"{n} (KCV {keys.as_dict()[n]})" for n in missing)
            + ": PROCESSOR_HSM_URL points at a different key store than the one `processor init` used"
        )
