"""A separate store process for the multi-process tests.

    python ledger_worker.py URL ACCOUNT_ID COUNT AMOUNT_MINOR KEY_PREFIX

Opens its own store, prints "ready", waits for a line on stdin, then submits COUNT PlaceHold operations
concurrently and prints one JSON line per acknowledged (committed) outcome, flushed at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys

from processor.auth.answers import LEDGER_ANSWERS
from processor.ledger import Store, ops


async def main(url: str, account_id: int, count: int, amount_minor: int, prefix: str) -> None:
    store = await Store.open(url)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)

    async def one(i: int) -> None:
        outcome = await store.submit(
            ops.PlaceHold(
                idem_key=f"{prefix}-{i}", mti="0100", terminal_id="PROC0001", stan=f"{i:06d}", rrn="",
                card_id=None, account_id=account_id, amount_minor=amount_minor, currency="EUR",
                auth_code="PROC01", expires_at=expires_at, answer_codes=LEDGER_ANSWERS,
            )
        )
        print(json.dumps({"key": outcome.idem_key, "rc": outcome.rc, "hold_id": outcome.hold_id}), flush=True)

    try:
        await asyncio.gather(*(one(i) for i in range(count)))
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]))
