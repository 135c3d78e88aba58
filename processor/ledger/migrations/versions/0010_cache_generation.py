"""The cache generation: one counter that every change of what the engine caches (a card's status, keys or
account, its controls, a terminal's keys or status, its merchant) moves, by triggers in the same transaction.

Revision ID: 0010
Revises: 0009
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: Union[str, Sequence[str], None] = "0009"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# (table, the columns whose change must reach the engines' caches, whether a new row must too; None: any
# update). Not a card's pin_tries or last_atc, nor a terminal's ksn_counter or ksn_window: the hot path
# moves those, and the engine reads a card fresh for a request that needs them (a PIN, a cryptogram).
WATCHED = (
    ("cards", ("account_id", "status", "product", "token", "pan_fingerprint", "fingerprint_version", "sealed_pan",
               "data_key_version", "expiry", "service_code", "psn", "pin_method", "pin_value", "replaced_by_card_id"), True),
    ("accounts", ("status", "currency"), False),
    ("card_controls", None, True),
    ("terminals", ("terminal_id", "merchant_id", "status", "key_scheme", "bdk_kcv", "initial_ksn", "chip_capable"), True),
    ("merchants", ("merchant_id", "mcc"), True),
)


def _events(columns: tuple[str, ...] | None, inserts: bool) -> list[str]:
    return ["UPDATE OF " + ", ".join(columns) if columns else "UPDATE", "DELETE"] + (["INSERT"] if inserts else [])


def _triggers(dialect: str) -> list[str]:
    out = []
    for table, columns, inserts in WATCHED:
        for n, event in enumerate(_events(columns, inserts)):
            name = f"{table}_cache_generation_{n}"
            if dialect == "postgresql":
                out.append(f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH STATEMENT EXECUTE FUNCTION bump_cache_generation()")
            else:
                out.append(
                    f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW "
                    "BEGIN UPDATE cache_generation SET generation = generation + 1 WHERE name = 'caches'; END"
                )
    return out


def upgrade() -> None:
    op.create_table('cache_generation',
    sa.Column('name', sa.String(length=16), nullable=False),
    sa.Column('generation', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_cache_generation'))
    )
    op.execute("INSERT INTO cache_generation (name, generation) VALUES ('caches', 0)")
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION bump_cache_generation() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN UPDATE cache_generation SET generation = generation + 1 WHERE name = 'caches'; RETURN NULL; END $$"
        )
    for statement in _triggers(dialect):
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table, columns, inserts in WATCHED:
        for n in range(len(_events(columns, inserts))):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_cache_generation_{n}" + (f" ON {table}" if dialect == "postgresql" else ""))
    if dialect == "postgresql":
        op.execute("DROP FUNCTION bump_cache_generation()")
    op.drop_table('cache_generation')
