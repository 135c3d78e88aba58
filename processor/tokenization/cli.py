"""Operator commands for wallet payment tokens, card replacement and PAN vault key rotation.

`register(sub, data_command)` adds them to the `processor` parser: `token provision|suspend|resume|delete|
show|list`, `card replace` and `keys rotate`. Each command is `async def f(rt, args) -> dict`.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from processor.commands import Command, DataCommand, Runtime, comma_list, count, group, validity_years
from processor.output import progress

log = logging.getLogger("processor.tokenization")

async def cmd_token_provision(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.tokenization.wallet import provision_token

    keys = await rt.issuer_keys()
    result = await provision_token(
        rt.store,
        rt.hsm,
        keys,
        card_id=args.card,
        wallet=args.wallet,
        device_id=args.device,
        requestor_id=args.requestor,
        entry_modes=comma_list(args.entry_modes, "--entry-modes"),
        mcc_allow=comma_list(args.mcc, "--mcc"),
        merchant_allow=comma_list(args.merchant, "--merchant"),
        validity_years=args.years,
        wallet_dir=args.wallet_dir,
    )
    log.info("token %d provisioned for card %d (wallet %s)", result["id"], args.card, args.wallet)
    return result


def _status_command(status: str) -> Command:
    async def run(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
        from processor.tokenization import tokens

        await tokens.set_status(rt.store, args.token_id, status, args.reason)
        log.info("token %d -> %s (%s)", args.token_id, status, args.reason or "no reason given")
        view = await tokens.get(rt.store, args.token_id)
        return {"id": view.id, "card_id": view.card_id, "status": view.status}

    run.__name__ = f"cmd_token_{status}"
    return run


async def cmd_token_show(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.tokenization.wallet import token_details

    return await token_details(rt.store, args.token_id)


async def cmd_token_list(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.tokenization.wallet import list_card_tokens

    return {"card_id": args.card, "tokens": await list_card_tokens(rt.store, args.card)}


async def cmd_card_replace(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.tokenization.wallet import replace_card

    keys = await rt.issuer_keys()
    result = await replace_card(rt.store, rt.hsm, keys, args.card_id, pin=args.pin)
    log.info("card %d replaced by card %d; tokens moved: %s", args.card_id, result["id"], result["repointed_token_ids"])
    return result


async def cmd_keys_rotate(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.tokenization.vault import rotate_keys, rotate_vault

    result: dict[str, Any] = {}
    if args.new_keys:
        dek, fpk = await rotate_keys(rt.hsm)
        log.warning("new tokenization key versions: DEK %d, FPK %d", dek, fpk)
        result["new_keys"] = {"data_key_version": dek, "fingerprint_key_version": fpk}

    with progress("keys rotate") as report:

        def resealed(counts: dict[str, int]) -> None:
            report("cards re-sealed", counts["cards_resealed"], None)
            report("tokens re-sealed", counts["tokens_resealed"], None)

        result.update(await rotate_vault(rt.store, rt.hsm, batch_size=args.batch, limit=args.limit, progress=resealed))
    return result


def register(sub: Any, data_command: DataCommand) -> None:
    """Add `token ...`, `card replace` and `keys rotate` to the `processor` command parser."""
    tk = group(sub, "token", "wallet payment tokens")
    p = data_command(tk, "provision", cmd_token_provision, "create a device token for a card (number shown once)")
    p.set_defaults(hsm_role="issuer")
    p.add_argument("--card", type=int, required=True, help="the card the token stands for")
    p.add_argument("--wallet", required=True, help="wallet name, e.g. phone")
    p.add_argument("--device", required=True, help="device id in the wallet")
    p.add_argument("--requestor", default="40010030273", help="token requestor id (11 digits)")
    p.add_argument("--entry-modes", default="07", help="allowed DE 22 entry modes, comma separated (default 07)")
    p.add_argument("--mcc", help="allowed MCCs, comma separated (default: any)")
    p.add_argument("--merchant", help="allowed merchant ids (DE 42), comma separated (default: any)")
    p.add_argument("--years", type=validity_years, default=3, help="token validity in years, 1 to 10")
    p.add_argument("--wallet-dir", default="card-bureau", help="where the device's sealed wallet record goes (needs `bureau key`)")
    for status, help in (("suspended", "suspend"), ("active", "resume"), ("deleted", "delete")):
        p = data_command(tk, help, _status_command(status), f"{help} a token")
        p.add_argument("token_id", type=int, help="the token")
        p.add_argument("--reason", default="", help="recorded with the lifecycle event")
    p = data_command(tk, "show", cmd_token_show, "a token's status, card, restrictions and events")
    p.add_argument("token_id", type=int, help="the token")
    p = data_command(tk, "list", cmd_token_list, "the tokens of a card")
    p.add_argument("--card", type=int, required=True, help="the card")

    cd = group(sub, "card", "cards")
    p = data_command(cd, "replace", cmd_card_replace, "new card on the same account; wallet tokens follow it")
    p.set_defaults(hsm_role="issuer")
    p.add_argument("card_id", type=int, help="the card to replace")
    p.add_argument("--pin", help="PIN of the new card (4-12 digits)")

    ks = group(sub, "keys", "HSM key versions")
    p = data_command(ks, "rotate", cmd_keys_rotate, "re-seal the PAN vault under the current (or new) key versions")
    p.set_defaults(hsm_role="issuer")
    p.add_argument("--batch", type=count, default=200, help="cards per transaction")
    p.add_argument("--limit", type=int, help="stop after this many cards and tokens (resume later)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--new-keys", action="store_true", help="first make new DEK and FPK versions current")
    mode.add_argument("--resume", dest="new_keys", action="store_false", help="only re-seal (the default)")
