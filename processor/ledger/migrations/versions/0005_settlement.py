"""Settlement: business days, settled items, positions, exceptions, clearing files and presentments;
the auths rows record acquirer, merchant, MCC and entry mode for settlement.

Revision ID: 0005
Revises: 0004
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

revision: str = "0005"
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('clearing_files',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('file_id', sa.String(length=64), nullable=False),
    sa.Column('network', sa.String(length=11), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('records', sa.Integer(), nullable=False),
    sa.Column('control_sum_minor', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('business_date', sa.String(length=10), nullable=False),
    sa.Column('ingested_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("status IN ('ingesting', 'complete')", name=op.f('ck_clearing_files_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_clearing_files')),
    sa.UniqueConstraint('file_id', name=op.f('uq_clearing_files_file_id'))
    )
    op.create_table('settlement_days',
    sa.Column('business_date', sa.String(length=10), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('window_end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('cutoff', sa.String(length=8), nullable=False),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('scan_from_id', sa.BigInteger(), nullable=False),
    sa.Column('scanned_to_id', sa.BigInteger(), nullable=False),
    sa.Column('next_scan_id', sa.BigInteger(), nullable=True),
    sa.Column('runs', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('settled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('summary', sa.Text(), nullable=True),
    sa.CheckConstraint("state IN ('running', 'settled')", name=op.f('ck_settlement_days_state')),
    sa.PrimaryKeyConstraint('business_date', name=op.f('pk_settlement_days'))
    )
    op.create_table('settlement_exceptions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('business_date', sa.String(length=10), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('reference', sa.String(length=120), nullable=False),
    sa.Column('detail', sa.String(length=300), nullable=False),
    sa.Column('amount_minor', sa.BigInteger(), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_settlement_exceptions')),
    sa.UniqueConstraint('kind', 'reference', name=op.f('uq_settlement_exceptions_kind_reference'))
    )
    with op.batch_alter_table('settlement_exceptions', schema=None) as batch_op:
        batch_op.create_index('ix_settlement_exceptions_business_date', ['business_date'], unique=False)

    op.create_table('settlement_items',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('source_key', sa.String(length=40), nullable=False),
    sa.Column('business_date', sa.String(length=10), nullable=False),
    sa.Column('origin_date', sa.String(length=10), nullable=False),
    sa.Column('side', sa.String(length=8), nullable=False),
    sa.Column('kind', sa.String(length=24), nullable=False),
    sa.Column('party', sa.String(length=32), nullable=False),
    sa.Column('terminal_id', sa.String(length=16), nullable=False),
    sa.Column('mcc', sa.String(length=4), nullable=False),
    sa.Column('entry_mode', sa.String(length=2), nullable=False),
    sa.Column('auth_id', sa.BigInteger(), nullable=True),
    sa.Column('card_id', sa.BigInteger(), nullable=True),
    sa.Column('amount_minor', sa.BigInteger(), nullable=False),
    sa.Column('fee_minor', sa.BigInteger(), nullable=False),
    sa.Column('interchange_minor', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('captured_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_settlement_items')),
    sa.UniqueConstraint('source_key', name=op.f('uq_settlement_items_source_key'))
    )
    with op.batch_alter_table('settlement_items', schema=None) as batch_op:
        batch_op.create_index('ix_settlement_items_business_date_id', ['business_date', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_settlement_items_origin_date'), ['origin_date'], unique=False)

    op.create_table('settlement_positions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('business_date', sa.String(length=10), nullable=False),
    sa.Column('side', sa.String(length=8), nullable=False),
    sa.Column('party', sa.String(length=32), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('purchases_count', sa.Integer(), nullable=False),
    sa.Column('purchases_minor', sa.BigInteger(), nullable=False),
    sa.Column('refunds_count', sa.Integer(), nullable=False),
    sa.Column('refunds_minor', sa.BigInteger(), nullable=False),
    sa.Column('reversals_count', sa.Integer(), nullable=False),
    sa.Column('reversals_minor', sa.BigInteger(), nullable=False),
    sa.Column('adjustments_count', sa.Integer(), nullable=False),
    sa.Column('adjustments_minor', sa.BigInteger(), nullable=False),
    sa.Column('gross_minor', sa.BigInteger(), nullable=False),
    sa.Column('fee_minor', sa.BigInteger(), nullable=False),
    sa.Column('interchange_minor', sa.BigInteger(), nullable=False),
    sa.Column('net_minor', sa.BigInteger(), nullable=False),
    sa.Column('entry_id', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_settlement_positions')),
    sa.UniqueConstraint('business_date', 'side', 'party', 'currency', name=op.f('uq_settlement_positions_business_date_side_party_currency'))
    )
    op.create_table('presentments',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('clearing_file_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('record_checksum', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('auth_id', sa.BigInteger(), nullable=True),
    sa.Column('card_id', sa.BigInteger(), nullable=True),
    sa.Column('amount_minor', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('auth_code', sa.String(length=8), nullable=False),
    sa.Column('rrn', sa.String(length=12), nullable=False),
    sa.Column('arn', sa.String(length=23), nullable=False),
    sa.Column('merchant_id', sa.String(length=15), nullable=False),
    sa.Column('pan_last4', sa.String(length=4), nullable=False),
    sa.Column('business_date', sa.String(length=10), nullable=False),
    sa.Column('entry_id', sa.BigInteger(), nullable=True),
    sa.Column('reason', sa.String(length=200), nullable=False),
    sa.CheckConstraint("status IN ('matched', 'forced', 'duplicate', 'rejected')", name=op.f('ck_presentments_status')),
    sa.ForeignKeyConstraint(['clearing_file_id'], ['clearing_files.id'], name=op.f('fk_presentments_clearing_file_id_clearing_files')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_presentments')),
    sa.UniqueConstraint('clearing_file_id', 'seq', name=op.f('uq_presentments_clearing_file_id_seq'))
    )
    with op.batch_alter_table('presentments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_presentments_auth_id'), ['auth_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_presentments_record_checksum'), ['record_checksum'], unique=False)

    with op.batch_alter_table('auths', schema=None) as batch_op:
        batch_op.add_column(sa.Column('acquirer_id', sa.String(length=11), server_default='', nullable=False))
        batch_op.add_column(sa.Column('merchant_id', sa.String(length=15), server_default='', nullable=False))
        batch_op.add_column(sa.Column('mcc', sa.String(length=4), server_default='', nullable=False))
        batch_op.add_column(sa.Column('entry_mode', sa.String(length=2), server_default='', nullable=False))
        batch_op.create_index('ix_auths_auth_code', ['auth_code'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('auths', schema=None) as batch_op:
        batch_op.drop_index('ix_auths_auth_code')
        batch_op.drop_column('entry_mode')
        batch_op.drop_column('mcc')
        batch_op.drop_column('merchant_id')
        batch_op.drop_column('acquirer_id')

    with op.batch_alter_table('presentments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_presentments_record_checksum'))
        batch_op.drop_index(batch_op.f('ix_presentments_auth_id'))

    op.drop_table('presentments')
    op.drop_table('settlement_positions')
    with op.batch_alter_table('settlement_items', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_settlement_items_origin_date'))
        batch_op.drop_index('ix_settlement_items_business_date_id')

    op.drop_table('settlement_items')
    with op.batch_alter_table('settlement_exceptions', schema=None) as batch_op:
        batch_op.drop_index('ix_settlement_exceptions_business_date')

    op.drop_table('settlement_exceptions')
    op.drop_table('settlement_days')
    op.drop_table('clearing_files')
