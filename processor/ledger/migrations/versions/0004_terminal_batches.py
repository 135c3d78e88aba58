"""Terminals say whether they read chips; terminal batches record end-of-day reconciliations (0500).

Revision ID: 0004
Revises: 0003
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: Union[str, Sequence[str], None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("terminals") as batch:
        batch.add_column(sa.Column("chip_capable", sa.Boolean(), server_default=sa.true(), nullable=False))
    op.create_table(
        "terminal_batches",
        sa.Column("id", _ID, nullable=False),
        sa.Column("idem_key", sa.String(length=255), nullable=False),
        sa.Column("terminal_id", sa.String(length=16), nullable=False),
        sa.Column("batch_number", sa.String(length=6), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("credits_count", sa.Integer(), nullable=False),
        sa.Column("credits_minor", sa.BigInteger(), nullable=False),
        sa.Column("debits_count", sa.Integer(), nullable=False),
        sa.Column("debits_minor", sa.BigInteger(), nullable=False),
        sa.Column("host_credits_count", sa.Integer(), nullable=False),
        sa.Column("host_credits_minor", sa.BigInteger(), nullable=False),
        sa.Column("host_debits_count", sa.Integer(), nullable=False),
        sa.Column("host_debits_minor", sa.BigInteger(), nullable=False),
        sa.Column("rc", sa.String(length=2), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("rc IN ('00', '95')", name=op.f("ck_terminal_batches_rc")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_terminal_batches")),
        sa.UniqueConstraint("idem_key", name=op.f("uq_terminal_batches_idem_key")),
    )
    with op.batch_alter_table("terminal_batches") as batch:
        batch.create_index(batch.f("ix_terminal_batches_terminal_id"), ["terminal_id"], unique=False)
    with op.batch_alter_table("auths") as batch:
        batch.add_column(sa.Column("batch_id", _ID, nullable=True))
        batch.create_foreign_key(
            batch.f("fk_auths_batch_id_terminal_batches"), "terminal_batches", ["batch_id"], ["id"]
        )
        batch.create_index(batch.f("ix_auths_terminal_id_batch_id"), ["terminal_id", "batch_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("auths") as batch:
        batch.drop_index(batch.f("ix_auths_terminal_id_batch_id"))
        batch.drop_constraint(batch.f("fk_auths_batch_id_terminal_batches"), type_="foreignkey")
        batch.drop_column("batch_id")
    with op.batch_alter_table("terminal_batches") as batch:
        batch.drop_index(batch.f("ix_terminal_batches_terminal_id"))
    op.drop_table("terminal_batches")
    with op.batch_alter_table("terminals") as batch:
        batch.drop_column("chip_capable")
