"""Settlement: the business day, merchant settlement with fees, network clearing files, reports.

    config = await load_config(store)                       # cutoff, time zone, fee table, tolerance
    summary = await settle_day(store, day, config)          # claim, post, write the day's files
    result = await ingest_file(store, hsm, path, config)    # a network's clearing file (first presentments)
    report = await build_report(store, day)                 # the day as one JSON document (write_html renders it)

End-of-day jobs (run for every day settled, after its postings): `register_end_of_day_job(name, job)`.
Settlement talks to the ledger only through the store's `run_read` / `run_write` and its public methods, and
keeps every journal entry balanced (`post_entry` checks it).
"""

from processor.settlement.calendar import BusinessCalendar
from processor.settlement.config import SettlementConfig, add_network, add_network_merchant, load_config, save_config
from processor.settlement.day import END_OF_DAY_JOBS, register_end_of_day_job, settle_day
from processor.settlement.fees import FeeRule, FeeTable
from processor.settlement.report import build_report, reconcile, write_html

__all__ = [
    "END_OF_DAY_JOBS",
    "BusinessCalendar",
    "FeeRule",
    "FeeTable",
    "SettlementConfig",
    "add_network",
    "add_network_merchant",
    "build_report",
    "load_config",
    "reconcile",
    "register_end_of_day_job",
    "save_config",
    "settle_day",
    "write_html",
]
