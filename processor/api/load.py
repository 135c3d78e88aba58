"""`processor api-load`: P2P payments through the money app's HTTP API, with a live feed measured alongside.

It enrolls its own cardholders through the operator API (or uses those given), signs each one in, then
drives `POST /v1/payments` from N keep-alive connections (closed loop, or a fixed overall rate) while S
cardholders hold an event stream open. It reports payments per second, latency percentiles, answers by
status and code, and for the feed how long each `payment.received` took from its commit to the reader
(measured from the event's occurred_at, stamped before the commit, so the figure errs on the long side).

The client is a small HTTP/1.1 keep-alive client of its own: a general-purpose client would cost more CPU
than the server's own work, on a machine the two share.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import contextlib
import datetime as dt
import json
import random
import secrets
import sys
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

REQUEST_TIMEOUT_S = 10.0
HEADER_MAX_BYTES = 16_384
BODY_MAX_BYTES = 1_000_000


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of a sorted list (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[rank]


class HttpError(Exception):
    """The server answered something this client cannot read, or not in time."""


class Connection:
    """One keep-alive HTTP/1.1 connection; requests one at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), REQUEST_TIMEOUT_S)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        if self.writer is None:
            await self._open()
        assert self.reader is not None and self.writer is not None
        data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(data)}"]
        if body is not None:
            lines.append("Content-Type: application/json")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                head = await self.reader.readuntil(b"\r\n\r\n")
                if len(head) > HEADER_MAX_BYTES:
                    raise HttpError("response header too long")
                status_line, *header_lines = head.decode("latin-1").split("\r\n")
                status = int(status_line.split(" ", 2)[1])
                length = 0
                for line in header_lines:
                    name, _, value = line.partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                if length > BODY_MAX_BYTES:
                    raise HttpError(f"response body of {length} bytes")
                raw = await self.reader.readexactly(length) if length else b""
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            await self.close()
            raise HttpError(f"{method} {path}: {type(exc).__name__}") from exc
        return status, (json.loads(raw) if raw else None)


@dataclass
class User:
    handle: str
    token: str
    cardholder_id: int


@dataclass
class LoadResult:
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    feed_ms: list[float] = field(default_factory=list)
    feed_events: int = 0

    def summary(self) -> dict[str, Any]:
        lat, feed = sorted(self.latencies_ms), sorted(self.feed_ms)
        ok = self.statuses.get("201", 0)
        return {
            "seconds": round(self.seconds, 2),
            "payments": ok,
            "payments_per_s": round(ok / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(percentile(lat, 50), 2),
            "p95_ms": round(percentile(lat, 95), 2),
            "p99_ms": round(percentile(lat, 99), 2),
            "max_ms": round(lat[-1], 2) if lat else 0.0,
            "answers": dict(sorted(self.statuses.items())),
            "transport_errors": self.errors,
            "feed": {
                "events": self.feed_events,
                "p50_ms": round(percentile(feed, 50), 2),
                "p99_ms": round(percentile(feed, 99), 2),
                "max_ms": round(feed[-1], 2) if feed else 0.0,
                "within_100_ms": round(sum(1 for v in feed if v <= 100) / len(feed), 4) if feed else None,
            },
        }


async def provision(host: str, port: int, operator_key: str, users: int, deposit_minor: int, currency: str) -> list[User]:
    """Enroll `users` cardholders with a funded account through the operator API, and sign each in."""
    tag = secrets.token_hex(3)
    conns = [Connection(host, port) for _ in range(min(8, users))]
    password = "load-" + secrets.token_urlsafe(12)
    op = {"Authorization": f"Bearer {operator_key}"}
    out: list[User] = []

    async def one(conn: Connection, n: int) -> None:
        handle = f"load{tag}{n:05d}"
        status, body = await conn.request("POST", "/v1/operator/cardholders",
                                          {"name": f"Load {n}", "handle": handle, "password": password, "currency": currency},
                                          op | {"Idempotency-Key": f"enroll-{handle}"})
        if status != 201:
            raise HttpError(f"enrolling {handle}: {status} {body}")
        status, _ = await conn.request("POST", f"/v1/operator/accounts/{body['account_id']}/deposits", {"amount_minor": deposit_minor},
                                       op | {"Idempotency-Key": f"fund-{handle}"})
        if status != 201:
            raise HttpError(f"funding {handle}: {status}")
        status, tokens = await conn.request("POST", "/v1/auth/sign-in", {"handle": handle, "password": password})
        if status != 200:
            raise HttpError(f"signing in {handle}: {status} {tokens}")
        out.append(User(handle, tokens["access_token"], tokens["cardholder_id"]))

    async def worker(conn: Connection, numbers: list[int]) -> None:
        for n in numbers:
            await one(conn, n)

    try:
        await asyncio.gather(*(worker(c, list(range(i, users, len(conns)))) for i, c in enumerate(conns)))
    finally:
        for c in conns:
            await c.close()
    return sorted(out, key=lambda u: u.handle)


async def _stream(host: str, port: int, user: User, result: LoadResult, stop: asyncio.Event) -> None:
    """Hold one event stream open and time each payment.received from its occurred_at."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write((f"GET /v1/events/stream HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {user.token}\r\n"
                      "Accept: text/event-stream\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise HttpError(f"event stream refused: {head[:80]!r}")
        buffer = b""
        while not stop.is_set():
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.strip() or b"0", 16)
            if size == 0:
                return
            buffer += await reader.readexactly(size)
            await reader.readexactly(2)
            while b"\n\n" in buffer:
                frame, buffer = buffer.split(b"\n\n", 1)
                arrived = dt.datetime.now(dt.UTC)
                for line in frame.split(b"\n"):
                    if line.startswith(b"data: "):
                        event = json.loads(line[6:])
                        if event["type"] == "payment.received":
                            occurred = dt.datetime.fromisoformat(event["occurred_at"])
                            result.feed_ms.append((arrived - occurred).total_seconds() * 1000)
                            result.feed_events += 1
    except (asyncio.IncompleteReadError, ConnectionError):
        return
    finally:
        writer.close()


async def drive(host: str, port: int, users: list[User], *, connections: int, seconds: float, rate: float | None,
                streams: int, quiet: bool, max_amount_minor: int = 100, currency: str = "EUR") -> LoadResult:
    """Send payments from random users to random others for `seconds`; returns what was measured."""
    result = LoadResult()
    stop = asyncio.Event()
    stream_tasks = [asyncio.create_task(_stream(host, port, u, result, stop)) for u in users[:streams]]
    await asyncio.sleep(0.2 if streams else 0)
    rng = random.Random(7)
    interval = connections / rate if rate else 0.0
    started = time.perf_counter()
    deadline = started + seconds

    async def worker(n: int) -> None:
        conn = Connection(host, port)
        mine = users[n % len(users)::connections] or users
        next_at = time.perf_counter() + (interval * n / connections if interval else 0)
        try:
            while True:
                now = time.perf_counter()
                if now >= deadline:
                    return
                scheduled = now
                if interval:
                    # Open loop: latency counts from when the payment was due, so a slow answer delays no measurement.
                    if next_at > now:
                        await asyncio.sleep(next_at - now)
                    scheduled = next_at
                    next_at += interval
                payer = rng.choice(mine)
                payee = rng.choice(users)
                if payee is payer:
                    payee = users[(users.index(payer) + 1) % len(users)]
                sent = scheduled if interval else time.perf_counter()
                try:
                    status, body = await conn.request(
                        "POST", "/v1/payments",
                        {"to": payee.handle, "amount_minor": rng.randint(1, max_amount_minor), "currency": currency, "note": "load"},
                        {"Authorization": f"Bearer {payer.token}", "Idempotency-Key": secrets.token_hex(12)},
                    )
                except HttpError:
                    result.errors += 1
                    continue
                result.latencies_ms.append((time.perf_counter() - sent) * 1000)
                code = body.get("error", {}).get("code") if isinstance(body, dict) and status >= 400 else None
                result.statuses[f"{status}" + (f" {code}" if code else "")] += 1
        finally:
            await conn.close()

    async def progress() -> None:
        last = 0
        while True:
            await asyncio.sleep(1)
            done = len(result.latencies_ms)
            lat = sorted(result.latencies_ms[last:])
            print(f"  {time.perf_counter() - started:5.1f} s  {done - last:6d}/s  p99 {percentile(lat, 99):6.2f} ms  "
                  f"feed {result.feed_events}", file=sys.stderr)
            last = done

    ticker = None if quiet else asyncio.create_task(progress())
    await asyncio.gather(*(worker(n) for n in range(connections)))
    result.seconds = time.perf_counter() - started
    if ticker is not None:
        ticker.cancel()
    await asyncio.sleep(0.3)  # the last events reach their streams
    stop.set()
    for task in stream_tasks:
        task.cancel()
    await asyncio.gather(*stream_tasks, return_exceptions=True)
    return result


async def baseline(host: str, port: int, users: list[User], *, connections: int, seconds: float) -> dict[str, Any]:
    """Authenticated reads (GET /v1/me) on the same connections: what HTTP and sign-in checks cost alone, now."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()

    async def worker(n: int) -> None:
        conn = Connection(host, port)
        user = users[n % len(users)]
        try:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                status, _ = await conn.request("GET", "/v1/me", None, {"Authorization": f"Bearer {user.token}"})
                if status == 200:
                    latencies.append((time.perf_counter() - sent) * 1000)
        finally:
            await conn.close()

    await asyncio.gather(*(worker(n) for n in range(connections)))
    elapsed = time.perf_counter() - started
    lat = sorted(latencies)
    return {"requests_per_s": round(len(lat) / elapsed, 1), "p50_ms": round(percentile(lat, 50), 2), "p99_ms": round(percentile(lat, 99), 2)}


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process on this machine (Linux /proc), or None when unreadable."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="the API, e.g. http://127.0.0.1:8080")
    p.add_argument("--operator-key", required=True, help="an operator key (`processor app operator-key`), to enroll the load's cardholders")
    p.add_argument("--users", type=int, default=100, help="cardholders to enroll and sign in (default 100)")
    p.add_argument("--connections", type=int, default=32, help="HTTP connections at once")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the run")
    p.add_argument("--rate", type=float, help="payments per second overall (default: as fast as answers come)")
    p.add_argument("--target-rate", type=float,
                   help="after the run, as long again at this fixed rate (payments/s, open loop): the latency and feed delay at that rate")
    p.add_argument("--streams", type=int, default=10, help="cardholders holding an event stream open (default 10)")
    p.add_argument("--deposit", type=int, default=10_000_000, help="each cardholder's funding, minor units")
    p.add_argument("--currency", default="EUR", help="currency of the payments")
    p.add_argument("--baseline", action="store_true", help="first measure authenticated reads (GET /v1/me) for as long, to compare")
    p.add_argument("--server-pid", type=int, help="the API's process id: report its CPU time per payment (Linux)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--json", action="store_true", help="print one JSON document")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    parsed = urllib.parse.urlsplit(args.url)
    if parsed.scheme != "http" or not parsed.hostname or not parsed.port:
        raise ValueError(f"--url must be http://HOST:PORT, got {args.url!r}")
    host, port = parsed.hostname, parsed.port
    if not args.quiet:
        print(f"enrolling and signing in {args.users} cardholders ...", file=sys.stderr)
    users = await provision(host, port, args.operator_key, args.users, args.deposit, args.currency)
    reference = None
    if args.baseline:
        reference = await baseline(host, port, users, connections=args.connections, seconds=args.seconds)
    if not args.quiet:
        print(f"driving {args.connections} connections for {args.seconds:g} s, {args.streams} event streams", file=sys.stderr)
    summary = await _measured(args, host, port, users, args.rate)
    summary |= {"users": args.users, "connections": args.connections, "streams": args.streams, "baseline": reference}
    if args.target_rate:
        if not args.quiet:
            print(f"driving {args.target_rate:g} payments/s for {args.seconds:g} s", file=sys.stderr)
        summary["at_rate"] = await _measured(args, host, port, users, args.target_rate) | {"rate": args.target_rate}
    return summary


async def _measured(args: argparse.Namespace, host: str, port: int, users: list[User], rate: float | None) -> dict[str, Any]:
    """One run of payments, with the CPU time the API (when its pid is given) and this process spent on each."""
    server_cpu = cpu_seconds(args.server_pid) if args.server_pid else None
    client_cpu = cpu_seconds(os.getpid())
    result = await drive(host, port, users, connections=args.connections, seconds=args.seconds, rate=rate,
                         streams=args.streams, quiet=args.quiet, currency=args.currency)
    summary = result.summary()
    payments = max(summary["payments"], 1)
    if server_cpu is not None and (after := cpu_seconds(args.server_pid)) is not None:
        summary["server_cpu_ms_per_payment"] = round((after - server_cpu) * 1000 / payments, 3)
    if client_cpu is not None and (after := cpu_seconds(os.getpid())) is not None:
        summary["client_cpu_ms_per_payment"] = round((after - client_cpu) * 1000 / payments, 3)
    return summary


def main_from_args(args: argparse.Namespace, settings: Any = None) -> int:
    """Run the load and print its summary; exit 1 when no payment succeeded."""
    from processor.api.server import run_until_done

    if args.users < 2 or args.connections < 1 or args.seconds <= 0 or args.streams < 0 or (args.target_rate is not None and args.target_rate <= 0):
        print("processor: api-load needs --users >= 2, --connections >= 1, --seconds > 0, --target-rate > 0", file=sys.stderr)
        return 2

    async def go() -> int:
        try:
            summary = await run(args)
        except (HttpError, ValueError, OSError) as exc:
            print(f"processor: api-load: {exc}", file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps(summary))
        else:
            feed = summary["feed"]
            print(f"{summary['payments']} payments in {summary['seconds']} s: {summary['payments_per_s']}/s, "
                  f"p50 {summary['p50_ms']} ms, p95 {summary['p95_ms']} ms, p99 {summary['p99_ms']} ms; answers {summary['answers']}")
            print(f"feed: {feed['events']} events, p50 {feed['p50_ms']} ms, p99 {feed['p99_ms']} ms, max {feed['max_ms']} ms "
                  f"from commit to reader")
            if (fixed := summary.get("at_rate")) is not None:
                print(f"at {fixed['rate']:g}/s: {fixed['payments_per_s']}/s answered, p50 {fixed['p50_ms']} ms, p99 {fixed['p99_ms']} ms; "
                      f"feed p50 {fixed['feed']['p50_ms']} ms, p99 {fixed['feed']['p99_ms']} ms; answers {fixed['answers']}")
        return 0 if summary["payments"] else 1

    return run_until_done(go())
