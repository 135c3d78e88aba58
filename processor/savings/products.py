"""Savings products (a rate table) and opening a savings account on one."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, insert, select, update

from processor.ledger.accounts import add_account
from processor.ledger.models import utcnow
from processor.ledger.errors import StoreError, StoreNotFound
from processor.savings.models import savings_accounts, savings_products

sp = savings_products.c


def product_json(row: Any) -> dict[str, Any]:
    return {"id": row.id, "code": row.code, "name": row.name, "currency": row.currency,
            "annual_rate_ppm": row.annual_rate_ppm, "status": row.status}


def set_product(conn: Connection, code: str, name: str, currency: str, annual_rate_ppm: int) -> dict[str, Any]:
    """Create a product, or change its name and rate (the new rate applies from the next day accrued)."""
    if not 0 <= annual_rate_ppm <= 1_000_000:
        raise StoreError(f"annual rate must be 0 to 1,000,000 ppm (0-100%), got {annual_rate_ppm}")
    row = conn.execute(select(sp.id, sp.currency).where(sp.code == code)).first()
    if row is None:
        conn.execute(insert(savings_products), {"code": code, "name": name, "currency": currency,
                                                "annual_rate_ppm": annual_rate_ppm, "status": "open", "created_at": utcnow()})
    elif row.currency != currency:
        raise StoreError(f"savings product {code} is in {row.currency}; a product keeps its currency")
    else:
        conn.execute(update(savings_products).where(sp.id == row.id).values(name=name, annual_rate_ppm=annual_rate_ppm))
    return product_json(conn.execute(select(savings_products).where(sp.code == code)).one())


def list_products(conn: Connection) -> list[dict[str, Any]]:
    return [product_json(r) for r in conn.execute(select(savings_products).order_by(sp.id))]


def open_savings(conn: Connection, cardholder_id: int, product_code: str) -> int:
    """Open a savings account of `product_code` for a cardholder; its id."""
    product = conn.execute(select(savings_products).where(sp.code == product_code)).first()
    if product is None or product.status != "open":
        raise StoreNotFound(f"savings product {product_code!r} does not exist or is closed")
    account_id = add_account(conn, cardholder_id, "savings", product.currency)
    conn.execute(insert(savings_accounts), {"account_id": account_id, "product_id": product.id, "accrued_minor": 0,
                                            "carry_units": 0, "opened_on": utcnow().date(), "last_accrued_on": None})
    return account_id
