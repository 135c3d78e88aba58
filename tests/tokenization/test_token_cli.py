"""The operator commands of tokenization, parsed as `processor` parses them and run on a real store and HSM."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from processor.cli import Runtime
from processor.errors import InvalidRequest
from processor.tokenization.cli import register


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="processor")
    sub = parser.add_subparsers(dest="command", required=True)

    def data_command(parent: Any, name: str, func: Any, help: str) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)
        return p

    # `card` already exists in the real CLI: `card replace` must join it, not replace it.
    cd = sub.add_parser("card").add_subparsers(dest="card_command", required=True)
    data_command(cd, "issue", lambda rt, args: None, "issue")
    register(sub, data_command)
    return parser


async def run(store: Any, hsm: Any, *argv: str) -> dict[str, Any]:
    args = _parser().parse_args([*argv, "--json"])
    result = await args.func(Runtime(settings=None, store=store, hsm=hsm), args)
    json.dumps(result, default=str)  # every answer is one JSON document
    return result


async def test_provision_show_suspend_replace_and_rotate_from_the_command_line(store, hsm, keys, new_card):
    card = await new_card()
    assert _parser().parse_args(["card", "issue"]).card_command == "issue"
    tok = await run(store, hsm, "token", "provision", "--card", str(card.id), "--wallet", "phone", "--device", "DEV",
                    "--entry-modes", "07,05", "--mcc", "5411,5812")
    assert tok["entry_modes"] == ["07", "05"] and tok["mcc_allow"] == ["5411", "5812"] and len(tok["token"]) == 16
    assert (await run(store, hsm, "token", "suspend", str(tok["id"]), "--reason", "TICKET-7"))["status"] == "suspended"
    assert (await run(store, hsm, "token", "resume", str(tok["id"])))["status"] == "active"
    shown = await run(store, hsm, "token", "show", str(tok["id"]))
    assert shown["card_id"] == card.id and shown["card_status"] == "active"
    assert [e["event"] for e in shown["events"]] == ["provisioned", "suspended", "resumed"]
    assert tok["token"] not in json.dumps(shown)
    listed = await run(store, hsm, "token", "list", "--card", str(card.id))
    assert [t["id"] for t in listed["tokens"]] == [tok["id"]]

    replaced = await run(store, hsm, "card", "replace", str(card.id), "--pin", "9876")
    assert replaced["repointed_token_ids"] == [tok["id"]] and replaced["pan"] != card.pan
    assert (await run(store, hsm, "token", "show", str(tok["id"])))["card_id"] == replaced["id"]

    rotated = await run(store, hsm, "keys", "rotate", "--new-keys", "--batch", "1")
    assert rotated["new_keys"] == {"data_key_version": 2, "fingerprint_key_version": 2}
    assert (rotated["cards_resealed"], rotated["tokens_resealed"], rotated["remaining"]) == (2, 1, 0)
    resumed = await run(store, hsm, "keys", "rotate", "--resume")
    assert (resumed["cards_resealed"], resumed["remaining"]) == (0, 0) and "new_keys" not in resumed

    assert (await run(store, hsm, "token", "delete", str(tok["id"])))["status"] == "deleted"
    with pytest.raises(InvalidRequest, match="empty entry"):
        await run(store, hsm, "token", "provision", "--card", str(replaced["id"]), "--wallet", "w", "--device", "d",
                  "--mcc", "5411,")
