"""The money app: sign-in credentials and tokens, idempotency records, conversations, payment requests,
P2P day totals, the event outbox and its consumers, savings products and daily interest accruals.

Revision ID: 0007
Revises: 0006
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: Union[str, Sequence[str], None] = "0006"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table('app_idempotency',
    sa.Column('id', _ID, nullable=False),
    sa.Column('principal', sa.String(length=32), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=8), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('body', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("state IN ('pending', 'done')", name=op.f('ck_app_idempotency_state')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_app_idempotency')),
    sa.UniqueConstraint('principal', 'key', name=op.f('uq_app_idempotency_principal_key'))
    )
    op.create_table('app_operators',
    sa.Column('id', _ID, nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("status IN ('active', 'revoked')", name=op.f('ck_app_operators_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_app_operators')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_app_operators_key_hash')),
    sa.UniqueConstraint('name', name=op.f('uq_app_operators_name'))
    )
    op.create_table('app_sign_in_throttle',
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('first_failure_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('locked_until', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_app_sign_in_throttle'))
    )
    op.create_table('event_consumers',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('position', _ID, nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_event_consumers'))
    )
    op.create_table('savings_products',
    sa.Column('id', _ID, nullable=False),
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('annual_rate_ppm', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("status IN ('open', 'closed')", name=op.f('ck_savings_products_status')),
    sa.CheckConstraint('annual_rate_ppm >= 0 AND annual_rate_ppm <= 1000000', name=op.f('ck_savings_products_rate_range')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_savings_products')),
    sa.UniqueConstraint('code', name=op.f('uq_savings_products_code'))
    )
    op.create_table('app_credentials',
    sa.Column('cardholder_id', _ID, nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['cardholder_id'], ['cardholders.id'], name=op.f('fk_app_credentials_cardholder_id_cardholders')),
    sa.PrimaryKeyConstraint('cardholder_id', name=op.f('pk_app_credentials'))
    )
    op.create_table('app_tokens',
    sa.Column('id', _ID, nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('cardholder_id', _ID, nullable=False),
    sa.Column('family', sa.String(length=32), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('access', 'refresh')", name=op.f('ck_app_tokens_kind')),
    sa.ForeignKeyConstraint(['cardholder_id'], ['cardholders.id'], name=op.f('fk_app_tokens_cardholder_id_cardholders')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_app_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_app_tokens_token_hash'))
    )
    with op.batch_alter_table('app_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_app_tokens_cardholder_id'), ['cardholder_id'], unique=False)
        batch_op.create_index('ix_app_tokens_family', ['family'], unique=False)

    op.create_table('conversations',
    sa.Column('id', _ID, nullable=False),
    sa.Column('low_id', _ID, nullable=False),
    sa.Column('high_id', _ID, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('low_id < high_id', name=op.f('ck_conversations_ordered_pair')),
    sa.ForeignKeyConstraint(['high_id'], ['cardholders.id'], name=op.f('fk_conversations_high_id_cardholders')),
    sa.ForeignKeyConstraint(['low_id'], ['cardholders.id'], name=op.f('fk_conversations_low_id_cardholders')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_conversations')),
    sa.UniqueConstraint('low_id', 'high_id', name=op.f('uq_conversations_low_id_high_id'))
    )
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_conversations_high_id'), ['high_id'], unique=False)

    op.create_table('events',
    sa.Column('id', _ID, nullable=False),
    sa.Column('audience', sa.String(length=16), nullable=False),
    sa.Column('cardholder_id', _ID, nullable=True),
    sa.Column('type', sa.String(length=48), nullable=False),
    sa.Column('data', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("(audience = 'cardholder') = (cardholder_id IS NOT NULL)", name=op.f('ck_events_cardholder_events_have_one')),
    sa.CheckConstraint("audience IN ('cardholder', 'operator')", name=op.f('ck_events_audience')),
    sa.ForeignKeyConstraint(['cardholder_id'], ['cardholders.id'], name=op.f('fk_events_cardholder_id_cardholders')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_events'))
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_cardholder_id_id', ['cardholder_id', 'id'], unique=False)

    op.create_table('interest_accruals',
    sa.Column('account_id', _ID, nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('balance_minor', sa.BigInteger(), nullable=False),
    sa.Column('annual_rate_ppm', sa.Integer(), nullable=False),
    sa.Column('accrued_minor', sa.BigInteger(), nullable=False),
    sa.Column('carry_units', sa.BigInteger(), nullable=False),
    sa.Column('posted_entry_id', _ID, nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_interest_accruals_account_id_accounts')),
    sa.ForeignKeyConstraint(['posted_entry_id'], ['journal_entries.id'], name=op.f('fk_interest_accruals_posted_entry_id_journal_entries')),
    sa.PrimaryKeyConstraint('account_id', 'day', name=op.f('pk_interest_accruals'))
    )
    op.create_table('p2p_daily',
    sa.Column('account_id', _ID, nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('sent_minor', sa.BigInteger(), nullable=False),
    sa.Column('sent_count', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_p2p_daily_account_id_accounts')),
    sa.PrimaryKeyConstraint('account_id', 'day', name=op.f('pk_p2p_daily'))
    )
    op.create_table('payment_requests',
    sa.Column('id', _ID, nullable=False),
    sa.Column('conversation_id', _ID, nullable=False),
    sa.Column('requester_id', _ID, nullable=False),
    sa.Column('payer_id', _ID, nullable=False),
    sa.Column('amount_minor', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('note', sa.String(length=280), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('payment_item_id', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('open', 'paid', 'declined', 'cancelled', 'expired')", name=op.f('ck_payment_requests_status')),
    sa.CheckConstraint('amount_minor > 0', name=op.f('ck_payment_requests_amount_positive')),
    sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'], name=op.f('fk_payment_requests_conversation_id_conversations')),
    sa.ForeignKeyConstraint(['payer_id'], ['cardholders.id'], name=op.f('fk_payment_requests_payer_id_cardholders')),
    sa.ForeignKeyConstraint(['requester_id'], ['cardholders.id'], name=op.f('fk_payment_requests_requester_id_cardholders')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payment_requests'))
    )
    with op.batch_alter_table('payment_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_payment_requests_conversation_id'), ['conversation_id'], unique=False)
        batch_op.create_index('ix_payment_requests_status_expires_at', ['status', 'expires_at'], unique=False)

    op.create_table('savings_accounts',
    sa.Column('account_id', _ID, nullable=False),
    sa.Column('product_id', _ID, nullable=False),
    sa.Column('accrued_minor', sa.BigInteger(), nullable=False),
    sa.Column('carry_units', sa.BigInteger(), nullable=False),
    sa.Column('opened_on', sa.Date(), nullable=False),
    sa.Column('last_accrued_on', sa.Date(), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_savings_accounts_account_id_accounts')),
    sa.ForeignKeyConstraint(['product_id'], ['savings_products.id'], name=op.f('fk_savings_accounts_product_id_savings_products')),
    sa.PrimaryKeyConstraint('account_id', name=op.f('pk_savings_accounts'))
    )
    with op.batch_alter_table('savings_accounts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_savings_accounts_product_id'), ['product_id'], unique=False)

    op.create_table('conversation_items',
    sa.Column('id', _ID, nullable=False),
    sa.Column('conversation_id', _ID, nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('sender_id', _ID, nullable=False),
    sa.Column('text', sa.String(length=1000), nullable=False),
    sa.Column('amount_minor', sa.BigInteger(), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=True),
    sa.Column('entry_id', _ID, nullable=True),
    sa.Column('request_id', _ID, nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('message', 'payment', 'request')", name=op.f('ck_conversation_items_kind')),
    sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'], name=op.f('fk_conversation_items_conversation_id_conversations')),
    sa.ForeignKeyConstraint(['entry_id'], ['journal_entries.id'], name=op.f('fk_conversation_items_entry_id_journal_entries')),
    sa.ForeignKeyConstraint(['request_id'], ['payment_requests.id'], name=op.f('fk_conversation_items_request_id_payment_requests')),
    sa.ForeignKeyConstraint(['sender_id'], ['cardholders.id'], name=op.f('fk_conversation_items_sender_id_cardholders')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_conversation_items'))
    )
    with op.batch_alter_table('conversation_items', schema=None) as batch_op:
        batch_op.create_index('ix_conversation_items_conversation_id_id', ['conversation_id', 'id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('conversation_items', schema=None) as batch_op:
        batch_op.drop_index('ix_conversation_items_conversation_id_id')

    op.drop_table('conversation_items')
    with op.batch_alter_table('savings_accounts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_savings_accounts_product_id'))

    op.drop_table('savings_accounts')
    with op.batch_alter_table('payment_requests', schema=None) as batch_op:
        batch_op.drop_index('ix_payment_requests_status_expires_at')
        batch_op.drop_index(batch_op.f('ix_payment_requests_conversation_id'))

    op.drop_table('payment_requests')
    op.drop_table('p2p_daily')
    op.drop_table('interest_accruals')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_cardholder_id_id')

    op.drop_table('events')
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_conversations_high_id'))

    op.drop_table('conversations')
    with op.batch_alter_table('app_tokens', schema=None) as batch_op:
        batch_op.drop_index('ix_app_tokens_family')
        batch_op.drop_index(batch_op.f('ix_app_tokens_cardholder_id'))

    op.drop_table('app_tokens')
    op.drop_table('app_credentials')
    op.drop_table('savings_products')
    op.drop_table('event_consumers')
    op.drop_table('app_sign_in_throttle')
    op.drop_table('app_operators')
    op.drop_table('app_idempotency')
