"""Operator mistakes, as an operator makes them: each gets one line on standard error saying what is wrong
and what to do, a non-zero exit, never a traceback, and leaves nothing half-written behind."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import PROGRAMS, run_cli

def _environment(env: dict[str, str] | None) -> dict[str, str]:
    base = {**os.environ, "PROCESSOR_DB_URL": "", "PROCESSOR_HSM_URL": "", "HSM_LMK_PASSPHRASE": "", "HSM_KEYSTORE": ""}
    return {**base, **(env or {})}


def run(program: str, cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The program's answer to a command, run in this process (see cli_helpers)."""
    return run_cli(program, cwd, *args, env=_environment(env))


def run_process(program: str, cwd: Path, *args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """The installed program in a process of its own, as the operator starts it."""
    return subprocess.run(
        [str(Path(sys.executable).parent / program), *args], cwd=cwd, env=_environment(env),
        capture_output="stdout" not in kwargs, text=True, timeout=120, **kwargs,
    )


def refused(proc: subprocess.CompletedProcess, *phrases: str) -> None:
    """Non-zero, one line on standard error naming the problem, no traceback."""
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder after `processor init`, with a cardholder (ada) and her funded account."""
    folder = tmp_path_factory.mktemp("issuer")
    for args in (("init",), ("cardholder", "create", "--name", "Ada", "--handle", "ada"),
                 ("account", "open", "--cardholder", "ada", "--deposit", "100.00")):
        done = run("processor", folder, *args)
        assert done.returncode == 0, done.stderr
    return folder


def listed(folder: Path, what: str, *options: str) -> list[dict]:
    done = run("processor", folder, what, "list", *options, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("amount", ["NaN", "Infinity", "-Infinity", "1e3", "1" * 25, "-3", "10.001", "", "12,50", "0x10"])
def test_an_opening_deposit_that_is_not_an_amount_opens_no_account(issuer: Path, amount: str) -> None:
    before = listed(issuer, "account")
    refused(run("processor", issuer, "account", "open", "--cardholder", "ada", f"--deposit={amount}"), "--deposit")
    assert listed(issuer, "account") == before


@pytest.mark.parametrize("amount", ["NaN", "Infinity", "1e3", "9" * 25, "0"])
def test_a_deposit_that_is_not_an_amount_moves_nothing(issuer: Path, amount: str) -> None:
    account = listed(issuer, "account")[0]
    refused(run("processor", issuer, "account", "deposit", str(account["id"]), amount))
    assert listed(issuer, "account")[0] == account


def test_a_chip_card_without_the_bureau_key_is_not_issued(issuer: Path) -> None:
    account = listed(issuer, "account")[0]
    refused(run("processor", issuer, "card", "issue", "--account", str(account["id"]), "--chip"), "processor bureau key")
    assert listed(issuer, "card") == []


def test_internal_accounts_are_not_customer_accounts(issuer: Path) -> None:
    internal = listed(issuer, "account", "--internal")
    assert {a["kind"] for a in internal} == {"internal funding", "internal clearing"}
    for account in internal:
        refused(run("processor", issuer, "account", "show", str(account["id"])), "internal", "account list")
        refused(run("processor", issuer, "account", "deposit", str(account["id"]), "5.00"), "internal")


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (("init", "--bin", "12"), "6 to 8 digits"),
        (("init", "--bin", "4895371"), "token BIN"),
        (("init", "--bin", "990001"), "surrogate"),
        (("card", "issue", "--account", "3", "--years", "-1"), "--years"),
        (("card", "issue", "--account", "3", "--years", "abc"), "--years"),
        (("card", "issue", "--account", "3", "--magstripe-only", "--chip"), "magstripe"),
        (("card", "list", "--status", "shiny"), "--status"),
        (("provision", "--cardholders", "0"), "--cardholders"),
        (("provision", "--cardholders", "2", "--deposit", "NaN"), "--deposit"),
        (("provision", "--cardholders", "2", "--wallets"), "--bureau-dir"),
        (("serve", "--tcp", "127.0.0.1:99999"), "65535"),
        (("serve", "--tcp", "abc"), "HOST:PORT"),
        (("token", "provision", "--card", "1", "--wallet", "phone", "--device", "P", "--mcc", "5411,,5812"), "empty entry"),
        (("card", "lisst"), "invalid choice"),
    ],
)
def test_mistyped_options_are_refused_in_one_line(issuer: Path, args: tuple[str, ...], phrase: str) -> None:
    before = listed(issuer, "card")
    refused(run("processor", issuer, *args), phrase)
    assert listed(issuer, "card") == before


def test_a_port_in_use(issuer: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused(run("processor", issuer, "serve", "--tcp", f"127.0.0.1:{port}"), "in use")
        ca = issuer / "ca"
        assert run("hsm-sim", issuer, "ca", "init", str(ca)).returncode == 0
        refused(run("hsm-sim", issuer, "serve", "--port", str(port), "--tls", str(ca)), "in use")


@pytest.mark.parametrize("writers", ["0", "17", "two", "-1"])
def test_serve_refuses_a_wrong_number_of_postgresql_writers(issuer: Path, writers: str) -> None:
    refused(run("processor", issuer, "serve", "--tcp", "127.0.0.1:0", env={"PROCESSOR_PG_WRITERS": writers}),
            "PROCESSOR_PG_WRITERS", "1 to 16")


@pytest.mark.parametrize("url", ["nonsense", "mysql://x@localhost/db", "sqlite:///plain-driver.db", "postgresql+asyncpg://x@127.0.0.1:1/db"])
def test_an_unusable_database_url(tmp_path: Path, url: str) -> None:
    refused(run("processor", tmp_path, "account", "list", env={"PROCESSOR_DB_URL": url}), "database")
    assert list(tmp_path.iterdir()) == []


def test_an_hsm_key_store_in_a_missing_folder_creates_no_folder(tmp_path: Path) -> None:
    refused(run("processor", tmp_path, "--hsm", f"file:{tmp_path}/missing/keys.json", "init"), "does not exist")
    refused(run("hsm-sim", tmp_path, "keys", "list", "--keystore", f"{tmp_path}/missing/keys.json"), "does not exist")
    assert not (tmp_path / "missing").exists()


def test_a_passphrase_for_a_store_that_keeps_its_lmk_in_a_file_is_refused(issuer: Path) -> None:
    passphrase = {"HSM_LMK_PASSPHRASE": "a passphrase long enough"}
    refused(run("processor", issuer, "account", "list", env=passphrase), "unset HSM_LMK_PASSPHRASE")
    refused(run("hsm-sim", issuer, "keys", "list", env=passphrase), "unset HSM_LMK_PASSPHRASE")


def test_the_bureau_key_is_replaced_only_when_asked(tmp_path: Path) -> None:
    assert run("processor", tmp_path, "init").returncode == 0
    first = json.loads(run("processor", tmp_path, "bureau", "key", "--json").stdout)
    refused(run("processor", tmp_path, "bureau", "key"), first["kcv"], "--replace")
    kept = json.loads(run("processor", tmp_path, "bureau", "key", "--keep-if-kcv", first["kcv"], "--json").stdout)
    assert kept == {"kcv": first["kcv"]}
    second = json.loads(run("processor", tmp_path, "bureau", "key", "--replace", "--json").stdout)
    assert second["kcv"] != first["kcv"]


@pytest.mark.postgres
def test_a_read_only_database(pg_server, tmp_path: Path) -> None:
    name = pg_server.create_database("cli_read_only")
    try:
        url = pg_server.url_for(name)
        assert run("processor", tmp_path, "--db", url, "init").returncode == 0
        pg_server.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        refused(run("processor", tmp_path, "--db", url, "cardholder", "create", "--name", "Ada", "--handle", "ada"), "read-only")
    finally:
        pg_server.drop_database(name)


@pytest.mark.parametrize(
    ("program", "args", "env", "phrase"),
    [
        ("processor", ("account", "list"), {"PROCESSOR_DB_URL": "mysql://x@localhost/db"}, "database"),
        ("processor", ("card", "lisst"), {}, "invalid choice"),
        ("hsm-sim", ("keys", "list", "--keystore", "missing/keys.json"), {}, "does not exist"),
        ("terminal-sim", ("close-batch", "--terminal", "missing.json"), {}, ""),
    ],
)
def test_the_installed_programs_refuse_in_one_line(tmp_path: Path, program: str, args: tuple[str, ...], env: dict[str, str],
                                                   phrase: str) -> None:
    """The same mistakes as above through the console scripts, in processes of their own: nothing the
    interpreter adds on its way out (a traceback at exit, a warning) reaches the operator."""
    refused(run_process(program, tmp_path, *args, env=env), phrase)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def closed_pipe() -> Iterator[int]:
    """The write end of a pipe whose reader is gone, as `| head -1` leaves it once head has its line."""
    read, write = os.pipe()
    os.close(read)
    yield write
    os.close(write)


def test_output_into_a_closed_pipe_ends_quietly(issuer: Path, closed_pipe: int) -> None:
    for program, args in (("processor", ("cardholder", "list")), ("hsm-sim", ("keys", "list"))):
        proc = run_process(program, issuer, *args, stdout=closed_pipe, stderr=subprocess.PIPE)
        assert proc.returncode != 0 and not proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("load", "--tcp", "127.0.0.1:99999", "--provision", "1"),
        ("load", "--tcp", "abc", "--provision", "1"),
        ("load", "--seconds", "-1", "--provision", "1"),
        ("load", "--connections", "0", "--provision", "1"),
        ("load", "--provision", "-5"),
        ("load", "--rate", "NaN", "--provision", "1"),
        ("pos", "--terminal", "t.json", "--amount", "NaN"),
        ("pos", "--terminal", "t.json", "--amount", "1e3"),
        ("pos", "--terminal", "t.json", "--amount", "Infinity"),
        ("pos", "--terminal", "t.json", "--amount", "1" * 25),
        ("card", "--vpcd", "--card-id", "1", "--port", "99999"),
        ("close-batch", "--terminal", "missing.json"),
    ],
)
def test_terminal_sim_mistakes(tmp_path: Path, args: tuple[str, ...]) -> None:
    refused(run("terminal-sim", tmp_path, *args))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [("serve", "--port", "99999", "--tls", "ca"), ("serve", "--port", "abc"),
                                  ("bench", "--seconds", "-1"), ("bench", "--rounds", "0")])
def test_hsm_sim_mistakes(tmp_path: Path, args: tuple[str, ...]) -> None:
    refused(run("hsm-sim", tmp_path, *args))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ help


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from _parsers(child)


@pytest.mark.parametrize("module", PROGRAMS.values())
def test_every_option_has_help_that_names_its_default(module: str) -> None:
    import importlib

    missing = []
    for parser in _parsers(importlib.import_module(module).build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            text = formatter._get_help_string(action) if action.help else ""
            if not text:
                missing.append(f"{parser.prog} {action.dest}: no help")
            elif action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
                missing.append(f"{parser.prog} {action.option_strings[0]}: help does not name the default {action.default!r}")
    assert missing == []


def test_processor_help_lists_the_environment(tmp_path: Path) -> None:
    from processor.config import ENVIRONMENT

    text = run_process("processor", tmp_path, "--help").stdout
    for name, _ in ENVIRONMENT:
        assert name in text
    assert {"PROCESSOR_DB_URL", "PROCESSOR_HSM_URL", "PROCESSOR_MQTT_URL", "PROCESSOR_EVENTS_MQTT_URL", "PROCESSOR_PG_WRITERS",
            "HSM_LMK_FILE"} <= {n for n, _ in ENVIRONMENT}


def test_global_options_work_after_the_command(issuer: Path, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{issuer / 'processor.db'}"
    before = run("processor", tmp_path, "--db", url, "cardholder", "list", "--json")
    after = run("processor", tmp_path, "cardholder", "list", "--json", "--db", url, "-v")
    assert before.returncode == after.returncode == 0, after.stderr
    assert json.loads(after.stdout) == json.loads(before.stdout) != []


def test_processor_and_hsm_sim_share_one_key_store(issuer: Path) -> None:
    from hsm_sim import DEFAULT_KEYSTORE

    assert (issuer / DEFAULT_KEYSTORE).exists()
    keys = run("hsm-sim", issuer, "keys", "list", "--json")
    assert keys.returncode == 0 and json.loads(keys.stdout), keys.stderr
