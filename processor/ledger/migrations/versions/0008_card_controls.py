"""Card controls (limits, blocked categories, countries, channels) and the per-card day and month totals.

Revision ID: 0008
Revises: 0007
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: Union[str, Sequence[str], None] = "0007"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table('card_controls',
    sa.Column('card_id', _ID, nullable=False),
    sa.Column('card_token', sa.String(length=19), nullable=False),
    sa.Column('per_transaction_minor', sa.BigInteger(), nullable=True),
    sa.Column('daily_minor', sa.BigInteger(), nullable=True),
    sa.Column('daily_count', sa.Integer(), nullable=True),
    sa.Column('monthly_minor', sa.BigInteger(), nullable=True),
    sa.Column('monthly_count', sa.Integer(), nullable=True),
    sa.Column('blocked_mccs', sa.Text(), nullable=False),
    sa.Column('blocked_categories', sa.Text(), nullable=False),
    sa.Column('allowed_countries', sa.Text(), nullable=True),
    sa.Column('contactless', sa.Boolean(), nullable=False),
    sa.Column('ecommerce', sa.Boolean(), nullable=False),
    sa.Column('atm', sa.Boolean(), nullable=False),
    sa.Column('abroad', sa.Boolean(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['card_id'], ['cards.id'], name=op.f('fk_card_controls_card_id_cards')),
    sa.PrimaryKeyConstraint('card_id', name=op.f('pk_card_controls')),
    sa.UniqueConstraint('card_token', name=op.f('uq_card_controls_card_token'))
    )
    op.create_table('card_spend',
    sa.Column('card_id', _ID, nullable=False),
    sa.Column('period', sa.String(length=11), nullable=False),
    sa.Column('amount_minor', sa.BigInteger(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['card_id'], ['cards.id'], name=op.f('fk_card_spend_card_id_cards')),
    sa.PrimaryKeyConstraint('card_id', 'period', name=op.f('pk_card_spend'))
    )


def downgrade() -> None:
    op.drop_table('card_spend')
    op.drop_table('card_controls')
