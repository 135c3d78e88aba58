"""Answers record the store's result and how later messages refer to them; terminals keep their DUKPT counter.

Revision ID: 0006
Revises: 0005
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: Union[str, Sequence[str], None] = "0005"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("auths") as batch:
        batch.add_column(sa.Column("ref", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("result", sa.String(length=24), nullable=True))
    # Rows written before: their reference was their idempotency key, their result follows from the code.
    op.execute("UPDATE auths SET ref = idem_key")
    op.execute(
        "UPDATE auths SET result = CASE rc WHEN '00' THEN 'approved' WHEN '10' THEN 'partial' "
        "WHEN '51' THEN 'insufficient_funds' WHEN '25' THEN 'unknown_original' ELSE 'declined' END"
    )
    with op.batch_alter_table("auths") as batch:
        batch.alter_column("ref", existing_type=sa.String(length=255), nullable=False)
        batch.alter_column("result", existing_type=sa.String(length=24), nullable=False)
        batch.create_index(batch.f("ix_auths_ref"), ["ref"], unique=False)
    with op.batch_alter_table("terminals") as batch:
        batch.add_column(sa.Column("ksn_counter", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("terminals") as batch:
        batch.drop_column("ksn_counter")
    with op.batch_alter_table("auths") as batch:
        batch.drop_index(batch.f("ix_auths_ref"))
        batch.drop_column("result")
        batch.drop_column("ref")
