"""Payment tokens for wallets (device tokens with domain restrictions) and their lifecycle events.

Revision ID: 0003
Revises: 0002
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: Union[str, Sequence[str], None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "payment_tokens",
        sa.Column("id", _ID, nullable=False),
        sa.Column("card_id", _ID, nullable=False),
        sa.Column("token_fingerprint", sa.String(length=128), nullable=False),
        sa.Column("fingerprint_version", sa.Integer(), nullable=False),
        sa.Column("sealed_token", sa.Text(), nullable=False),
        sa.Column("data_key_version", sa.Integer(), nullable=False),
        sa.Column("token_last4", sa.String(length=4), nullable=False),
        sa.Column("token_bin", sa.String(length=8), nullable=False),
        sa.Column("expiry", sa.String(length=4), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("requestor_id", sa.String(length=11), nullable=False),
        sa.Column("wallet", sa.String(length=32), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("allowed_entry_modes", sa.String(length=64), nullable=False),
        sa.Column("mcc_allow", sa.Text(), nullable=True),
        sa.Column("merchant_allow", sa.Text(), nullable=True),
        sa.Column("last_atc", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('active', 'suspended', 'deleted')", name=op.f("ck_payment_tokens_status")
        ),
        sa.ForeignKeyConstraint(["card_id"], ["cards.id"], name=op.f("fk_payment_tokens_card_id_cards")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_tokens")),
        sa.UniqueConstraint("token_fingerprint", name=op.f("uq_payment_tokens_token_fingerprint")),
    )
    with op.batch_alter_table("payment_tokens") as batch:
        batch.create_index(batch.f("ix_payment_tokens_card_id"), ["card_id"], unique=False)
    op.create_table(
        "token_events",
        sa.Column("id", _ID, nullable=False),
        sa.Column("token_id", _ID, nullable=False),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "event IN ('provisioned', 'suspended', 'resumed', 'deleted', 'repointed')",
            name=op.f("ck_token_events_event"),
        ),
        sa.ForeignKeyConstraint(
            ["token_id"], ["payment_tokens.id"], name=op.f("fk_token_events_token_id_payment_tokens")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_token_events")),
    )
    with op.batch_alter_table("token_events") as batch:
        batch.create_index(batch.f("ix_token_events_token_id"), ["token_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("token_events") as batch:
        batch.drop_index(batch.f("ix_token_events_token_id"))
    op.drop_table("token_events")
    with op.batch_alter_table("payment_tokens") as batch:
        batch.drop_index(batch.f("ix_payment_tokens_card_id"))
    op.drop_table("payment_tokens")
