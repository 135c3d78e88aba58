"""Unreferenced refunds counted per merchant and day; refunds and reversals found by their original; the
window of DUKPT counters a terminal used below its highest.

Revision ID: 0009
Revises: 0008
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: Union[str, Sequence[str], None] = "0008"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('merchant_refunds',
    sa.Column('merchant_id', sa.String(length=15), nullable=False),
    sa.Column('day', sa.String(length=10), nullable=False),
    sa.Column('amount_minor', sa.BigInteger(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('merchant_id', 'day', name=op.f('pk_merchant_refunds'))
    )
    op.add_column('terminals', sa.Column('ksn_window', sa.BigInteger(), nullable=True))
    op.create_index('ix_auths_original_auth_id', 'auths', ['original_auth_id'], unique=False,
                    postgresql_where=sa.text('original_auth_id IS NOT NULL'),
                    sqlite_where=sa.text('original_auth_id IS NOT NULL'))


def downgrade() -> None:
    op.drop_index('ix_auths_original_auth_id', table_name='auths')
    with op.batch_alter_table('terminals') as batch:
        batch.drop_column('ksn_window')
    op.drop_table('merchant_refunds')
