"""What the settlement operator reads: the day's report (terminal and HTML), its exceptions, the days' states.

`build_report` gathers one JSON document from the settled day (positions, totals, exceptions, adjustments
in both directions, presentments) and the day's requests (volume by hour, approval rate, top declines).
`write_html` renders that document as one self-contained page (inline SVG charts, no script); every
figure on the page carries a `data-field` naming where it comes from in the JSON, so a browser test can
compare the two.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from pathlib import Path
from typing import Any

from processor.errors import InvalidRequest
from processor.iso8583.currency import exponent_for_alpha
from processor.ledger import StoreInterface
from processor.settlement import queries
from processor.settlement.calendar import BusinessCalendar


def money(amount_minor: int | None, currency: str, *, code: bool = True) -> str:
    """12345, 'EUR' -> '123.45 EUR' (thousands separated); code=False leaves the currency out."""
    if amount_minor is None:
        return "-"
    try:
        exponent = exponent_for_alpha(currency)
    except KeyError:
        exponent = 2
    sign = "-" if amount_minor < 0 else ""
    units, minor = divmod(abs(amount_minor), 10**exponent)
    text = f"{sign}{units:,}.{minor:0{exponent}d}" if exponent else f"{sign}{units:,}"
    return f"{text} {currency}" if code else text


async def build_report(store: StoreInterface, day: dt.date) -> dict[str, Any]:
    """The report of a settled day as one JSON document."""
    key = day.isoformat()
    row = await store.run_read(queries.day_row, key)
    if row is None or row["state"] != "settled":
        state = row["state"] if row else "open"
        raise InvalidRequest(f"day {key} is {state}, not settled; run `processor settle run --date {key}` first")
    summary = json.loads(row["summary"])
    calendar = BusinessCalendar(row["cutoff"], row["timezone"])
    start, end = calendar.window(day)
    stats = await store.run_read(queries.day_statistics, start, end)
    zone = calendar.zone
    # Every hour of the day gets its bar (23 or 25 of them on DST days), the quiet ones at zero.
    seen = {h["hour_utc"]: h for h in stats["by_hour"]}
    hours, at = [], start.replace(minute=0, second=0, microsecond=0)
    while at < end:
        label = at.strftime("%Y-%m-%d %H")
        hour = seen.get(label) or {"hour_utc": label, "requests": 0, "approved": 0, "amount_minor": 0}
        hour["hour_local"] = at.astimezone(zone).strftime("%H:%M")
        hours.append(hour)
        at += dt.timedelta(hours=1)
    stats["by_hour"] = hours
    names = await store.run_read(queries.networks)
    for network in summary["networks"]:
        network["name"] = names.get(network["party"], "")
    return {
        **summary,
        "statistics": stats,
        "exceptions_list": await store.run_read(queries.exceptions, key),
        "later_adjustments": await store.run_read(queries.later_adjustments, key),
        "presentments": await store.run_read(queries.presentment_summary, key),
    }


async def reconcile(store: StoreInterface, day: dt.date) -> dict[str, Any]:
    """The day's exceptions, grouped by kind (the day must have been run)."""
    key = day.isoformat()
    row = await store.run_read(queries.day_row, key)
    listed = await store.run_read(queries.exceptions, key)
    by_kind: dict[str, int] = {}
    for e in listed:
        by_kind[e["kind"]] = by_kind.get(e["kind"], 0) + 1
    return {"business_date": key, "state": row["state"] if row else "open", "by_kind": by_kind, "exceptions": listed}


# ------------------------------------------------------------------ terminal


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False, width=160)


def print_status(days: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="Business days", title_justify="left")
    for name, justify in (("day", "left"), ("state", "left"), ("items", "right"), ("exceptions", "right"),
                          ("runs", "right"), ("settled at (UTC)", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for d in days:
        state = d["state"] + (" with exceptions" if d["exceptions"] else "")
        table.add_row(d["business_date"], state, f"{d['items']:,}" if d["items"] is not None else "-",
                      str(d["exceptions"]), str(d["runs"]), (d["settled_at"] or "-")[:19])
    if not days:
        _console().print("No business day has been run yet: `processor settle run --date YYYY-MM-DD`.")
        return
    _console().print(table)


def print_reconcile(result: dict[str, Any]) -> None:
    from rich.table import Table

    console = _console()
    if not result["exceptions"]:
        console.print(f"Day {result['business_date']} ({result['state']}): no exceptions.")
        return
    table = Table(title=f"Exceptions of {result['business_date']} ({result['state']})", title_justify="left")
    for name, justify in (("kind", "left"), ("reference", "left"), ("amount", "right"), ("detail", "left")):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for e in result["exceptions"]:
        table.add_row(e["kind"], e["reference"], money(e["amount_minor"], e["currency"]) if e["currency"] else "-", e["detail"])
    console.print(table)


def print_report(report: dict[str, Any]) -> None:
    from rich.table import Table

    console = _console()
    w = report["window"]
    console.print(
        f"[bold]Settlement of business day {report['business_date']}[/bold]  ({report['cutoff']} {report['timezone']}, "
        f"{w['hours']:g} hours: {w['start'][:19]} to {w['end'][:19]} UTC)"
    )
    stats = report["statistics"]
    rate = f"{stats['approval_rate'] * 100:.1f} %" if stats["approval_rate"] is not None else "-"
    console.print(f"Requests {stats['requests']:,}, approved {stats['approved']:,} ({rate}); "
                  f"transactions settled {report['items']:,}; holds released {report['holds_expired']:,}")
    for title, rows, side in (("Merchants (on-us)", report["merchants"], "on_us"), ("Networks (off-us)", report["networks"], "off_us")):
        if not rows:
            continue
        table = Table(title=title, title_justify="left")
        columns = ["party", "cur", "purchases", "refunds", "reversals", "adjust.", "gross",
                   "fees" if side == "on_us" else "-", "interchange", "net due" if side == "on_us" else "we owe"]
        for i, c in enumerate(columns):
            table.add_column(c, justify="left" if i < 2 else "right", no_wrap=True)
        for r in rows:
            cur = r["currency"]
            name = r["party"] + (f" {r['name']}" if r.get("name") else "")

            def both(kind: str, r: dict[str, Any] = r, cur: str = cur) -> str:
                return f"{r[kind + '_count']:,} × {money(r[kind + '_minor'], cur, code=False)}"

            table.add_row(
                name, cur, both("purchases"), both("refunds"), both("reversals"), both("adjustments"),
                money(r["gross_minor"], cur, code=False), money(r["fee_minor"], cur, code=False) if side == "on_us" else "",
                money(r["interchange_minor"], cur, code=False), money(r["net_minor"], cur, code=False),
            )
        console.print(table)
    totals = Table(title="Totals", title_justify="left")
    for c in ("currency", "transactions", "net (cardholders paid)", "control sum"):
        totals.add_column(c, justify="left" if c == "currency" else "right")
    for cur, t in report["totals"].items():
        totals.add_row(cur, f"{t['items']:,}", money(t["net_minor"], cur), money(t["control_sum_minor"], cur))
    console.print(totals)
    if report["later_adjustments"]:
        console.print("Settled in later days as adjustments:")
        for adj in report["later_adjustments"]:
            console.print(f"  {adj['settled_in']}  {adj['kind']:<16} {adj['party']:<16} {adj['count']:>6,}  "
                          f"{money(adj['amount_minor'], adj['currency']):>18}")
    if report["exceptions_list"]:
        console.print(f"Exceptions: {len(report['exceptions_list'])} (`processor settle reconcile --date {report['business_date']}`)")
        for kind, n in sorted(report["exceptions"].items()):
            console.print(f"  {kind:<24} {n:>6}")
    else:
        console.print("Exceptions: none")
    for name, f in (report.get("files") or {}).items():
        console.print(f"{name}: {f['path']}")
    console.print(f"HTML report: {report['html']}")


# ------------------------------------------------------------------ HTML


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _bar_chart(title: str, field: str, labels: list[str], values: list[int], fmt: Any = str) -> str:
    width, height, pad = 720, 220, 30
    top = max(values) if values and max(values) > 0 else 1
    n = max(len(values), 1)
    slot = (width - 2 * pad) / n
    bars = []
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        h = (height - 2 * pad) * value / top
        x = pad + i * slot
        bars.append(
            f'<rect x="{x + 2:.1f}" y="{height - pad - h:.1f}" width="{max(slot - 4, 1):.1f}" height="{h:.1f}" '
            f'fill="#3b6ea5" data-field="{_esc(field)}[{i}]" data-value="{value}"><title>{_esc(label)}: {_esc(fmt(value))}</title></rect>'
            f'<text x="{x + slot / 2:.1f}" y="{height - pad + 14}" font-size="10" text-anchor="middle">{_esc(label)}</text>'
        )
    return (
        f'<figure><figcaption>{_esc(title)}</figcaption><svg role="img" aria-label="{_esc(title)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">{"".join(bars)}'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#555"/></svg></figure>'
    )


def render_html(report: dict[str, Any]) -> str:
    """One self-contained HTML page for the report."""
    key = report["business_date"]
    stats = report["statistics"]
    hours = stats["by_hour"]
    out = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Settlement {key}</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}",
        "td,th{border:1px solid #ccc;padding:4px 8px}td.n{text-align:right;font-variant-numeric:tabular-nums}",
        "figure{margin:1em 0}figcaption{font-weight:600}</style></head><body>",
        f"<h1>Settlement of business day <span data-field='business_date'>{_esc(key)}</span></h1>",
        f"<p>Cutoff {_esc(report['cutoff'])} {_esc(report['timezone'])}; window {_esc(report['window']['start'])} to "
        f"{_esc(report['window']['end'])} ({report['window']['hours']:g} hours). Settled {_esc(report['settled_at'])}.</p>",
        "<h2>Totals</h2><table><tr><th>currency</th><th>transactions</th><th>net</th><th>control sum</th></tr>",
    ]
    for cur, t in report["totals"].items():
        out.append(
            f"<tr><td>{_esc(cur)}</td><td class='n' data-field='totals.{cur}.items'>{t['items']}</td>"
            f"<td class='n' data-field='totals.{cur}.net_minor' data-value='{t['net_minor']}'>{_esc(money(t['net_minor'], cur))}</td>"
            f"<td class='n' data-field='totals.{cur}.control_sum_minor' data-value='{t['control_sum_minor']}'>"
            f"{_esc(money(t['control_sum_minor'], cur))}</td></tr>"
        )
    out.append("</table>")
    for title, group in (("Merchants (on-us)", "merchants"), ("Networks (off-us)", "networks")):
        rows = report[group]
        out.append(f"<h2>{title}</h2>")
        if not rows:
            out.append("<p>None.</p>")
            continue
        out.append("<table><tr><th>party</th><th>purchases</th><th>refunds</th><th>reversals</th><th>adjustments</th>"
                   "<th>gross</th><th>fees</th><th>interchange</th><th>net</th></tr>")
        for i, r in enumerate(rows):
            cur = r["currency"]
            cells = [f"<td>{_esc(r['party'])} {_esc(r.get('name', ''))}</td>"]
            for name in ("purchases", "refunds", "reversals", "adjustments"):
                cells.append(
                    f"<td class='n' data-field='{group}[{i}].{name}_minor' data-value='{r[name + '_minor']}'>"
                    f"{r[name + '_count']} / {_esc(money(r[name + '_minor'], cur))}</td>"
                )
            for name in ("gross_minor", "fee_minor", "interchange_minor", "net_minor"):
                cells.append(f"<td class='n' data-field='{group}[{i}].{name}' data-value='{r[name]}'>{_esc(money(r[name], cur))}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</table>")
    rate = stats["approval_rate"]
    out.append(
        f"<h2>Requests</h2><p><span data-field='statistics.requests'>{stats['requests']}</span> requests, "
        f"<span data-field='statistics.approved'>{stats['approved']}</span> approved: approval rate "
        f"<span data-field='statistics.approval_rate' data-value='{rate if rate is not None else ''}'>"
        f"{f'{rate * 100:.1f} %' if rate is not None else '-'}</span>.</p>"
    )
    out.append(_bar_chart("Volume by hour (requests)", "statistics.by_hour.requests",
                          [h["hour_local"] for h in hours], [h["requests"] for h in hours]))
    out.append(_bar_chart("Approval rate by hour (per mille)", "statistics.by_hour.approval_permille",
                          [h["hour_local"] for h in hours],
                          [round(1000 * h["approved"] / h["requests"]) if h["requests"] else 0 for h in hours]))
    declines = stats["top_declines"]
    out.append(_bar_chart("Top decline reasons", "statistics.top_declines.count",
                          [f"{d['rc']}" for d in declines], [d["count"] for d in declines]))
    out.append("<table><tr><th>code</th><th>reason</th><th>count</th></tr>")
    for i, d in enumerate(declines):
        out.append(f"<tr><td>{_esc(d['rc'])}</td><td>{_esc(d['reason'])}</td>"
                   f"<td class='n' data-field='statistics.top_declines[{i}].count'>{d['count']}</td></tr>")
    out.append("</table>")
    out.append("<h2>Adjustments settled in later days</h2>")
    if report["later_adjustments"]:
        out.append("<table><tr><th>settled in</th><th>kind</th><th>party</th><th>count</th><th>amount</th></tr>")
        for i, adj in enumerate(report["later_adjustments"]):
            out.append(f"<tr><td>{_esc(adj['settled_in'])}</td><td>{_esc(adj['kind'])}</td><td>{_esc(adj['party'])}</td>"
                       f"<td class='n'>{adj['count']}</td><td class='n' data-field='later_adjustments[{i}].amount_minor' "
                       f"data-value='{adj['amount_minor']}'>{_esc(money(adj['amount_minor'], adj['currency']))}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p>None.</p>")
    out.append(f"<h2>Exceptions (<span data-field='exceptions_count'>{len(report['exceptions_list'])}</span>)</h2>")
    if report["exceptions_list"]:
        out.append("<table><tr><th>kind</th><th>reference</th><th>amount</th><th>detail</th></tr>")
        for e in report["exceptions_list"][:500]:
            amount = money(e["amount_minor"], e["currency"]) if e["currency"] else "-"
            out.append(f"<tr><td>{_esc(e['kind'])}</td><td>{_esc(e['reference'])}</td><td class='n'>{_esc(amount)}</td>"
                       f"<td>{_esc(e['detail'])}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p>None.</p>")
    out.append("</body></html>\n")
    return "".join(out)


def write_html(report: dict[str, Any], path: Path) -> str:
    """Write the HTML report atomically (0600); its path. A report is regenerated, so it replaces the last one."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(render_html(report))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(path.resolve())
