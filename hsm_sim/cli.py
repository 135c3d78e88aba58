"""`hsm-sim`: the deployment's CA, the HSM as a network service, its audit log, its keys, its benchmark."""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import warnings
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from hsm_sim import DEFAULT_KEYSTORE
from hsm_sim.arguments import Parser, count, port, positive

DEFAULT_PORT = 1500


def _quiet() -> None:
    try:
        from cryptography.utils import CryptographyDeprecationWarning
    except ImportError:
        return
    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)


def _keystore(args: argparse.Namespace) -> str:
    """The key-store file; its folder must exist (a mistyped path must not create folders)."""
    path = args.keystore or os.environ.get("HSM_KEYSTORE") or DEFAULT_KEYSTORE
    folder = Path(path).expanduser().absolute().parent
    if not folder.is_dir():
        raise ValueError(f"key store {path}: the folder {folder} does not exist; create it or give another --keystore")
    return path


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


async def _open(args: argparse.Namespace) -> Any:
    """The HSM the command talks to: `--hsm tcps://...` as the certificate `--as` names, else the key store in process."""
    from hsm_sim import connect
    from hsm_sim.pki import ClientTls

    if args.hsm:
        if not args.tls or not args.as_name:
            raise ValueError("--hsm needs --tls DIR and --as NAME (the certificate to connect with)")
        return await connect(args.hsm, tls=ClientTls.from_dir(args.tls, args.as_name))
    from hsm_sim import Hsm

    return Hsm.open(_keystore(args))


async def _keys(args: argparse.Namespace) -> Any:
    from hsm_sim import all_keys

    hsm = await _open(args)
    try:
        command = args.keys_command
        if command == "generate":
            return await hsm.generate_key(args.key_type, args.algorithm, key_bits=args.bits)
        if command == "list":
            return await all_keys(hsm)
        if command == "export":
            return {"kcv": args.kcv, "zmk": args.zmk, "key_block": await hsm.export_key(args.kcv, args.zmk, version=args.version)}
        if command == "import":
            return await hsm.import_key(args.key_type, args.key_block, args.zmk)
        if command == "components":
            return await hsm.form_key_from_components(args.key_type, args.component, args.algorithm)
        if command == "component":
            return await hsm.add_key_component(args.key_type, args.component, args.algorithm, ceremony=args.ceremony)
        raise AssertionError(command)
    finally:
        await hsm.close()


def _ca(args: argparse.Namespace) -> Any:
    from hsm_sim import pki

    if args.ca_command == "init":
        folder = pki.init_ca(args.dir, hosts=tuple(args.host) if args.host else pki.DEFAULT_HOSTS, days=args.days)
        return {"dir": str(folder), "ca": str(folder / "ca.pem"), "server": str(folder / "server.pem"), "crl": str(folder / "crl.pem")}
    if args.ca_command == "issue":
        entry = pki.issue(args.dir, role=args.role, name=args.name, days=args.days)
        return {**asdict(entry), "cert": str(Path(args.dir) / f"{args.name}.pem"), "key": str(Path(args.dir) / f"{args.name}.key")}
    if args.ca_command == "revoke":
        return pki.revoke(args.dir, args.who)
    if args.ca_command == "list":
        return pki.issued(args.dir)
    raise AssertionError(args.ca_command)


def _lmk(args: argparse.Namespace) -> dict[str, Any]:
    from hsm_sim import lmk
    from hsm_sim.keystore import KeyStore

    store = KeyStore.migrate(args.keystore) if args.lmk_command == "migrate" else KeyStore.open(_keystore(args))
    where = str(lmk.file_path()) if store.lmk_source == "file" else lmk.PASSPHRASE_ENV
    return {"keystore": str(store.path), "lmk_source": store.lmk_source, "lmk": where, "lmk_kcv": store.lmk_kcv, "keys": len(store.keys)}


def _audit(args: argparse.Namespace) -> list[dict[str, Any]]:
    from hsm_sim import audit

    path = Path(args.file) if args.file else Path(_keystore(args) + ".audit.jsonl")
    if not path.exists():
        raise ValueError(f"no audit log at {path} (give --file or --keystore)")
    records = audit.read(path, refusals_only=args.refusals, who=args.who, since=args.since)
    if args.limit < 0:
        raise ValueError("--limit must be 0 (all) or more")
    # The last N lines are kept as the log streams by, so a long log costs no more memory than N lines.
    return list(collections.deque(records, maxlen=args.limit)) if args.limit else list(records)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="hsm-sim", description="A software payment HSM.")
    sub = parser.add_subparsers(dest="command", required=True)

    ca = sub.add_parser("ca", help="the deployment's CA: certificates for the HSM and its clients").add_subparsers(
        dest="ca_command", required=True
    )
    p = ca.add_parser("init", help="create the CA, the HSM's server certificate and an empty revocation list in DIR")
    p.add_argument("dir", help="the CA's folder")
    p.add_argument("--host", action="append", help="a host name or address the HSM serves (repeat; default localhost, 127.0.0.1, ::1)")
    p.add_argument("--days", type=count, default=3650, help="validity of the CA and server certificates (default 3650)")
    p = ca.add_parser("issue", help="a client certificate: DIR/NAME.pem and DIR/NAME.key")
    p.add_argument("dir", help="the CA's folder")
    p.add_argument("--role", required=True, help="engine, issuer, operator, custodian or key-loader")
    p.add_argument("--name", required=True, help="who holds it (letters, digits, '.', '-', '_')")
    p.add_argument("--days", type=count, default=365, help="validity (default 365)")
    p = ca.add_parser("revoke", help="revoke a client's certificate; a running hsm-sim serve refuses it within a second")
    p.add_argument("dir", help="the CA's folder")
    p.add_argument("who", help="the certificate's name or serial (hex)")
    p = ca.add_parser("list", help="certificates issued, with their roles and whether they are revoked")
    p.add_argument("dir", help="the CA's folder")
    for p in ca.choices.values():
        p.add_argument("--json", action="store_true", help="print one JSON document")

    p = sub.add_parser("serve", help="serve the host commands over mutual TLS")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    p.add_argument("--keystore", help=f"key-store file (default: HSM_KEYSTORE or ./{DEFAULT_KEYSTORE})")
    p.add_argument("--tls", default=os.environ.get("HSM_TLS_DIR"), help="the CA folder of `hsm-sim ca init` (default: HSM_TLS_DIR)")

    p = sub.add_parser("audit", help="the audit log: every command and every refusal")
    p.add_argument("--keystore", help="the key store whose log to read (<keystore>.audit.jsonl)")
    p.add_argument("--file", help="an audit log file")
    p.add_argument("--refusals", action="store_true", help="only refused clients and commands (status 17)")
    p.add_argument("--who", help="only this client's lines")
    p.add_argument("--since", help="only lines at or after this ISO time, e.g. 2026-12-01T09:00")
    p.add_argument("--limit", type=int, default=50, help="the last N lines (0: all; default 50)")
    p.add_argument("--json", action="store_true", help="print one JSON document")

    lmk = sub.add_parser("lmk", help="the LMK, kept apart from the key store").add_subparsers(dest="lmk_command", required=True)
    p = lmk.add_parser("status", help="where the key store's LMK comes from, its check value, the number of keys")
    p.add_argument("--keystore", help=f"key-store file (default: HSM_KEYSTORE or ./{DEFAULT_KEYSTORE})")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p = lmk.add_parser("migrate", help="move an older key store's keys from its embedded LMK to an LMK kept apart")
    p.add_argument("keystore", help="the key-store file to migrate")
    p.add_argument("--json", action="store_true", help="print one JSON document")

    p = sub.add_parser("bench", help="operations per second: in process, over TCP, over mutual TLS")
    p.add_argument("--seconds", type=positive, default=1.0, help="length of one round (default 1.0)")
    p.add_argument("--rounds", type=count, default=3, help="rounds per case; the median is reported (default 3)")
    p.add_argument("--in-flight", type=count, default=256, help="requests in flight over the network (default 256)")
    p.add_argument("--json", action="store_true", help="print one JSON document")

    keys = sub.add_parser("keys", help="key management").add_subparsers(dest="keys_command", required=True)
    for name, help_text in (
        ("generate", "generate a key"),
        ("list", "list keys"),
        ("export", "export a key as a TR-31 block under a ZMK or KEK"),
        ("import", "import a TR-31 block under a ZMK or KEK"),
        ("components", "form a key from two or more clear components at once (in process only)"),
        ("component", "give one custodian's component; a second custodian completes the key (dual control)"),
    ):
        p = keys.add_parser(name, help=help_text)
        p.add_argument("--keystore", help="in process, on this key-store file")
        p.add_argument("--hsm", help="or a running HSM: tcps://HOST:PORT")
        p.add_argument("--tls", default=os.environ.get("HSM_TLS_DIR"), help="folder holding ca.pem and the certificate (default: HSM_TLS_DIR)")
        p.add_argument("--as", dest="as_name", default=os.environ.get("HSM_CLIENT_NAME"), help="the certificate's name (default: HSM_CLIENT_NAME)")
        p.add_argument("--json", action="store_true", help="print one JSON document")
        if name in ("generate", "components", "component", "import"):
            p.add_argument("key_type", help="the key's type, e.g. CVK, PVK, BDK, ZMK, KEK")
        if name in ("generate", "components", "component"):
            p.add_argument("--algorithm", default="TDES", choices=["TDES", "AES", "HMAC"], help="the key's algorithm (default TDES)")
        if name == "generate":
            p.add_argument("--bits", type=int, help="key length: TDES 128 or 192, AES 128, 192 or 256 (default by key type)")
        if name == "components":
            p.add_argument("--component", action="append", required=True, help="hex; give two or more")
        if name == "component":
            p.add_argument("--component", required=True, help="this custodian's clear component (hex)")
            p.add_argument("--ceremony", help="the ceremony the first custodian's component opened")
        if name == "export":
            p.add_argument("kcv", help="check value of the key to export")
            p.add_argument("--zmk", required=True, help="check value of the ZMK or KEK to wrap it under")
            p.add_argument("--version", choices=["B", "C", "D"], help="TR-31 version (default: D under AES, B under TDES)")
        if name == "import":
            p.add_argument("key_block", help="the TR-31 key block")
            p.add_argument("--zmk", required=True, help="check value of the ZMK or KEK it is wrapped under")
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet()
    os.umask(0o077)  # everything the HSM writes holds keys or says who used them
    args = build_parser().parse_args(argv)
    from hsm_sim.errors import HsmError
    from hsm_sim.pki import PkiError

    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "bench":
            from hsm_sim.bench import print_results, run_bench

            results = _run(run_bench(args.seconds, args.rounds, args.in_flight))
            print(json.dumps(results)) if args.json else print_results(results)
            return 0
        if args.command == "ca":
            result = _ca(args)
        elif args.command == "audit":
            result = _audit(args)
        elif args.command == "lmk":
            result = _lmk(args)
        else:
            result = _run(_keys(args))
        _print(_plain(result), args.json)
    except (HsmError, PkiError, ValueError) as exc:
        print(f"hsm-sim: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`hsm-sim keys list | head -1`): stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        # A port in use, a folder that cannot be written: the operator's to fix, said in one line.
        print(f"hsm-sim: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", file=sys.stderr)
        return 2
    return 0


def _serve(args: argparse.Namespace) -> int:
    from hsm_sim import Hsm
    from hsm_sim.pki import ServerTls
    from hsm_sim.server import serve

    if not args.tls:
        print("hsm-sim: serve needs the deployment's certificates: `hsm-sim ca init DIR`, then --tls DIR", file=sys.stderr)
        return 2
    tls = ServerTls.from_dir(args.tls)
    _run(serve(Hsm.open(_keystore(args)), tls, args.host, args.port))
    return 0


def _print(result: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
    elif isinstance(result, list):
        for item in result:
            print(" ".join(f"{k}={v}" for k, v in item.items()))
    else:
        print(" ".join(f"{k}={v}" for k, v in result.items()))


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


if __name__ == "__main__":
    sys.exit(main())
