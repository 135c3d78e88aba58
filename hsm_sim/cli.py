"""`hsm-sim`: run the software HSM as a network service, benchmark it, manage its keys."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import warnings
from dataclasses import asdict
from typing import Any

DEFAULT_KEYSTORE = "hsm-keystore.json"


def _quiet() -> None:
    try:
        from cryptography.utils import CryptographyDeprecationWarning
    except ImportError:
        return
    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)


def _keystore(args: argparse.Namespace) -> str:
    return args.keystore or os.environ.get("HSM_KEYSTORE") or DEFAULT_KEYSTORE


async def _keys(args: argparse.Namespace) -> Any:
    from hsm_sim import Hsm

    hsm = Hsm.open(_keystore(args))
    try:
        if args.keys_command == "generate":
            return asdict(await hsm.generate_key(args.key_type, args.algorithm, key_bits=args.bits))
        if args.keys_command == "list":
            return [asdict(k) for k in await hsm.list_keys()]
        if args.keys_command == "export":
            return {"kcv": args.kcv, "zmk": args.zmk, "key_block": await hsm.export_key(args.kcv, args.zmk)}
        if args.keys_command == "components":
            return asdict(await hsm.form_key_from_components(args.key_type, args.component, args.algorithm))
        raise AssertionError(args.keys_command)
    finally:
        await hsm.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hsm-sim", description="A software payment HSM.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="serve the host-command protocol on TCP")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1500)
    p.add_argument("--keystore", help="key-store file (default: HSM_KEYSTORE or ./hsm-keystore.json)")
    p = sub.add_parser("bench", help="operations per second, in process and over TCP")
    p.add_argument("--seconds", type=float, default=1.0, help="length of one round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--in-flight", type=int, default=256, help="requests in flight over TCP")
    p.add_argument("--json", action="store_true")
    keys = sub.add_parser("keys", help="key management").add_subparsers(dest="keys_command", required=True)
    for name, help_text in (("generate", "generate a key"), ("list", "list keys"), ("export", "export a key under a ZMK"), ("components", "form a key from clear components")):
        p = keys.add_parser(name, help=help_text)
        p.add_argument("--keystore")
        p.add_argument("--json", action="store_true")
        if name in ("generate", "components"):
            p.add_argument("key_type")
            p.add_argument("--algorithm", default="TDES", choices=["TDES", "AES", "HMAC"])
        if name == "generate":
            p.add_argument("--bits", type=int, help="key length: TDES 128 or 192, AES 128, 192 or 256 (default by key type)")
        if name == "components":
            p.add_argument("--component", action="append", required=True, help="hex; give two or more")
        if name == "export":
            p.add_argument("kcv")
            p.add_argument("--zmk", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet()
    args = build_parser().parse_args(argv)
    from hsm_sim.errors import HsmError

    try:
        if args.command == "serve":
            from hsm_sim.server import serve

            _run(serve(_keystore(args), args.host, args.port))
            return 0
        if args.command == "bench":
            from hsm_sim.bench import print_results, run_bench

            results = _run(run_bench(args.seconds, args.rounds, args.in_flight))
            print(json.dumps(results)) if args.json else print_results(results)
            return 0
        result = _run(_keys(args))
    except HsmError as exc:
        print(f"hsm-sim: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps(result))
    elif isinstance(result, list):
        for item in result:
            print(" ".join(f"{k}={v}" for k, v in item.items()))
    else:
        print(" ".join(f"{k}={v}" for k, v in result.items()))
    return 0


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


if __name__ == "__main__":
    sys.exit(main())
