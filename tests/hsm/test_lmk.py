"""The LMK never lies beside the keys: an LMK file of its own (0600, in another folder) or a passphrase;
a key-store file alone decrypts nothing, and the wrong LMK or the wrong kind of LMK is refused."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hsm_sim import Hsm, HsmError
from hsm_sim.crypto.des import kcv
from hsm_sim.keyblock import header_for, wrap

PAN = "4761739001010010"


@pytest.fixture
def lmk_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "secrets" / "lmk.json"
    monkeypatch.setenv("HSM_LMK_FILE", str(path))
    monkeypatch.delenv("HSM_LMK_PASSPHRASE", raising=False)
    return path


async def _store_with_a_key(path: Path) -> tuple[str, str]:
    hsm = Hsm.open(path)
    cvk = (await hsm.generate_key("CVK")).kcv
    cvv = await hsm.generate_cvv(cvk, PAN, "3012", "000")
    await hsm.close()
    return cvk, cvv


async def test_the_key_store_alone_decrypts_nothing(tmp_path, lmk_file, monkeypatch):
    store = tmp_path / "hsm" / "ks.json"
    cvk, cvv = await _store_with_a_key(store)
    assert lmk_file.stat().st_mode & 0o777 == 0o600 and lmk_file.parent.stat().st_mode & 0o777 == 0o700
    assert store.parent.stat().st_mode & 0o777 == 0o700 and store.stat().st_mode & 0o777 == 0o600
    lmk = base64.b64decode(json.loads(lmk_file.read_text())["lmk"])
    text = store.read_text()
    assert lmk.hex() not in text.lower() and base64.b64encode(lmk).decode() not in text
    assert json.loads(text)["lmk"] == {"source": "file", "kcv": kcv(lmk, "AES")}

    monkeypatch.setenv("HSM_LMK_FILE", str(tmp_path / "elsewhere" / "lmk.json"))
    with pytest.raises(HsmError) as info:
        Hsm.open(store)
    assert info.value.code == "40" and "cannot be opened without its LMK" in info.value.message
    other = tmp_path / "other" / "lmk.json"
    monkeypatch.setenv("HSM_LMK_FILE", str(other))
    await _store_with_a_key(tmp_path / "another" / "ks.json")  # creates a different LMK there
    with pytest.raises(HsmError) as info:
        Hsm.open(store)
    assert "is not the LMK of key store" in info.value.message and "HSM_LMK_FILE" in info.value.message

    monkeypatch.setenv("HSM_LMK_FILE", str(lmk_file))
    hsm = Hsm.open(store)
    assert await hsm.generate_cvv(cvk, PAN, "3012", "000") == cvv
    assert (await hsm.diagnostics())["lmk_source"] == "file"
    await hsm.close()


async def test_an_lmk_file_others_can_read_or_beside_the_keys_is_refused(tmp_path, lmk_file, monkeypatch):
    store = tmp_path / "hsm" / "ks.json"
    await _store_with_a_key(store)
    lmk_file.chmod(0o640)
    with pytest.raises(HsmError) as info:
        Hsm.open(store)
    assert "readable by others (mode 640)" in info.value.message and f"chmod 600 {lmk_file}" in info.value.message
    monkeypatch.setenv("HSM_LMK_FILE", str(tmp_path / "hsm" / "lmk.json"))
    with pytest.raises(HsmError) as info:
        Hsm.open(tmp_path / "hsm" / "new.json")
    assert "lies beside the key store" in info.value.message
    assert not (tmp_path / "hsm" / "new.json").exists()


async def test_a_passphrase_derives_the_lmk(tmp_path, monkeypatch):
    monkeypatch.delenv("HSM_LMK_FILE", raising=False)
    monkeypatch.setenv("HSM_LMK_PASSPHRASE", "correct horse battery staple")
    store = tmp_path / "ks.json"
    cvk, cvv = await _store_with_a_key(store)
    record = json.loads(store.read_text())["lmk"]
    assert record["source"] == "passphrase" and set(record) == {"source", "salt", "scrypt", "kcv"}
    monkeypatch.setenv("HSM_LMK_PASSPHRASE", "wrong horse battery staple")
    with pytest.raises(HsmError, match="wrong HSM_LMK_PASSPHRASE"):
        Hsm.open(store)
    monkeypatch.delenv("HSM_LMK_PASSPHRASE")
    with pytest.raises(HsmError, match="is sealed under a passphrase: set HSM_LMK_PASSPHRASE"):
        Hsm.open(store)
    monkeypatch.setenv("HSM_LMK_PASSPHRASE", "correct horse battery staple")
    hsm = Hsm.open(store)
    assert await hsm.generate_cvv(cvk, PAN, "3012", "000") == cvv
    await hsm.close()


async def test_the_wrong_kind_of_lmk_is_refused(tmp_path, lmk_file, monkeypatch):
    store = tmp_path / "hsm" / "ks.json"
    await _store_with_a_key(store)
    monkeypatch.setenv("HSM_LMK_PASSPHRASE", "a passphrase nobody asked for")
    with pytest.raises(HsmError, match="both"):  # HSM_LMK_FILE is set too
        Hsm.open(store)
    monkeypatch.delenv("HSM_LMK_FILE")
    with pytest.raises(HsmError, match="keeps its LMK in a file, not under a passphrase: unset HSM_LMK_PASSPHRASE"):
        Hsm.open(store)
    monkeypatch.setenv("HSM_LMK_PASSPHRASE", "short")
    with pytest.raises(HsmError, match="at least 12 characters"):
        Hsm.open(tmp_path / "new.json")


def _format_1_store(path: Path, lmk: bytes, key: bytes) -> str:
    """A key store as hsm-sim wrote them before the LMK moved out: the LMK in clear beside the blocks."""
    value = kcv(key, "TDES")
    info = {"kcv": value, "key_type": "CVK", "algorithm": "TDES", "version": 1, "created_at": "2026-11-01T00:00:00+00:00"}
    block = wrap(lmk, key, header_for("D", "CVK", "TDES", "C", "E"))
    doc = {"format": "hsm-sim key store 1", "lmk": {"sealed": False, "value": base64.b64encode(lmk).decode()},
           "keys": [{"info": info, "block": block}], "current": {}}
    path.write_text(json.dumps(doc))
    return value


async def test_an_older_key_store_is_migrated_off_its_embedded_lmk(tmp_path, lmk_file):
    store = tmp_path / "hsm" / "old.json"
    store.parent.mkdir()
    old_lmk = bytes(range(32))
    cvk = _format_1_store(store, old_lmk, bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"))
    with pytest.raises(HsmError) as info:
        Hsm.open(store)
    assert f"hsm-sim lmk migrate {store}" in info.value.message
    done = subprocess.run([sys.executable, "-m", "hsm_sim.cli", "lmk", "migrate", str(store), "--json"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["keys"] == 1
    assert base64.b64encode(old_lmk).decode() not in store.read_text()
    hsm = Hsm.open(store)
    # psec's published CVV example for this CVK, PAN 4123456789012345, expiry 8701, service code 101.
    assert await hsm.generate_cvv(cvk, "4123456789012345", "8701", "101") == "561"
    assert (await hsm.key_info(cvk)).origin == "generated"
    await hsm.close()
