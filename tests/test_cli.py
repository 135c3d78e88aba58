"""The operator CLI as an operator uses it, one command after another on the same folder, and the JSON
shapes other tools rely on (the programs run in the test process: cli_helpers)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from cli_helpers import run_cli



def run(workdir: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = run_cli("processor", workdir, *args, env={**os.environ, **(env or {}), "PROCESSOR_DB_URL": "", "PROCESSOR_HSM_URL": ""})
    if check and proc.returncode != 0:
        raise AssertionError(f"processor {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def data(workdir: Path, *args: str) -> dict:
    return json.loads(run(workdir, *args, "--json").stdout)


def test_issue_a_card_from_an_empty_directory(tmp_path):
    init = data(tmp_path, "init")
    assert set(init["keys"]) >= {"cvk", "pvk", "bdk", "dek", "fpk"}
    assert (tmp_path / "processor.db").exists()
    keystore = tmp_path / "hsm-keystore.json"
    assert oct(keystore.stat().st_mode & 0o777) == "0o600"

    holder = data(tmp_path, "cardholder", "create", "--name", "Ada Lovelace", "--handle", "ada")
    account = data(tmp_path, "account", "open", "--cardholder", str(holder["id"]), "--type", "checking", "--currency", "EUR", "--deposit", "100.00")
    assert (account["ledger_minor"], account["available_minor"], account["currency"]) == (10000, 10000, "EUR")

    card = data(tmp_path, "card", "issue", "--account", str(account["id"]), "--pin", "1234")
    assert {"id", "pan", "expiry", "service_code", "track2", "cvv2", "psn"} <= set(card)
    assert re.fullmatch(r"\d{16}", card["pan"]) and re.fullmatch(r"\d{4}", card["expiry"])
    assert card["track2"].startswith(card["pan"] + "=" + card["expiry"] + card["service_code"])
    assert re.fullmatch(r"\d{3}", card["cvv2"])

    frozen = data(tmp_path, "card", "freeze", str(card["id"]))
    assert frozen["status"] == "frozen"
    assert data(tmp_path, "card", "unfreeze", str(card["id"]))["status"] == "active"

    terminal = data(tmp_path, "terminal", "add", "--id", "SHOP0001", "--merchant", "SHOP00000000001", "--mcc", "5411")
    assert re.fullmatch(r"[0-9A-F]{32}", terminal["ipek"]) and re.fullmatch(r"[0-9A-F]{20}", terminal["initial_ksn"])
    assert terminal["chip_capable"] is True
    pump = data(tmp_path, "terminal", "add", "--id", "PUMP0001", "--merchant", "FUEL00000000001", "--mcc", "5541", "--no-chip-reader")
    assert pump["chip_capable"] is False
    batches = data(tmp_path, "terminal", "batches", "SHOP0001")
    assert batches["closed"] == [] and batches["open"]["debits_count"] == 0 and batches["open"]["currency"] == "EUR"
    stripe = data(tmp_path, "card", "issue", "--account", str(account["id"]), "--magstripe-only")
    assert stripe["service_code"] == "101" and stripe["chip_track2"] is None
    run(tmp_path, "bureau", "key")
    no_chip = run(tmp_path, "card", "personalize", str(stripe["id"]), check=False)
    assert no_chip.returncode == 2 and "magstripe-only" in no_chip.stderr

    shown = data(tmp_path, "account", "show", str(account["id"]))
    assert shown["holds"] == [] and shown["ledger_minor"] == 10000

    check = data(tmp_path, "ledger", "check")
    assert check["ok"] is True

    # The clear PAN and CVV2 were shown once; neither is anywhere on disk.
    for path in tmp_path.iterdir():
        blob = path.read_bytes()
        assert card["pan"].encode() not in blob, path
        assert card["track2"].encode() not in blob, path


def test_clear_errors_and_exit_codes(tmp_path):
    run(tmp_path, "init")
    bad_pin = run(tmp_path, "card", "issue", "--account", "1", "--pin", "12a4", check=False)
    assert bad_pin.returncode == 2 and "PIN must be 4 to 12 digits" in bad_pin.stderr and "12a4" not in bad_pin.stderr
    holder = data(tmp_path, "cardholder", "create", "--name", "Ada", "--handle", "ada")
    dup = run(tmp_path, "cardholder", "create", "--name", "Other", "--handle", "ada", check=False)
    assert dup.returncode == 2 and "ada" in dup.stderr
    bad_amount = run(tmp_path, "account", "open", "--cardholder", str(holder["id"]), "--deposit", "10.001", check=False)
    assert bad_amount.returncode == 2 and "decimals" in bad_amount.stderr
    missing = run(tmp_path, "account", "show", "999", check=False)
    assert missing.returncode == 2 and "999" in missing.stderr
    no_terminal = run(tmp_path, "terminal", "batches", "NOSUCH01", check=False)
    assert no_terminal.returncode == 2 and "NOSUCH01" in no_terminal.stderr


def test_commands_before_init_say_so(tmp_path):
    proc = run(tmp_path, "card", "issue", "--account", "1", "--pin", "1234", check=False)
    assert proc.returncode == 2
    assert "processor init" in proc.stderr or "account" in proc.stderr
