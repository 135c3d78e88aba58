"""Initial schema: cardholders, accounts, cards, merchants, terminals, holds, double-entry journal, auths, config.

Revision ID: 0001
Revises:
Create Date: 2026-11-25 02:19:00.529442

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0001'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('cardholders',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('handle', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cardholders')),
    sa.UniqueConstraint('handle', name=op.f('uq_cardholders_handle'))
    )
    op.create_table('config',
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_config'))
    )
    op.create_table('journal_entries',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('reference', sa.String(length=200), nullable=False),
    sa.Column('auth_id', sa.BigInteger(), nullable=True),
    sa.Column('forced', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_journal_entries'))
    )
    op.create_table('merchants',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('merchant_id', sa.String(length=15), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('location', sa.String(length=200), nullable=False),
    sa.Column('mcc', sa.String(length=4), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_merchants')),
    sa.UniqueConstraint('merchant_id', name=op.f('uq_merchants_merchant_id'))
    )
    op.create_table('accounts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('cardholder_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('purpose', sa.String(length=32), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('ledger_minor', sa.BigInteger(), nullable=False),
    sa.Column('held_minor', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("(kind = 'internal') = (cardholder_id IS NULL)", name=op.f('ck_accounts_internal_has_no_cardholder')),
    sa.CheckConstraint("kind IN ('checking', 'savings', 'internal')", name=op.f('ck_accounts_kind')),
    sa.CheckConstraint("status IN ('open', 'frozen', 'closed')", name=op.f('ck_accounts_status')),
    sa.CheckConstraint('held_minor >= 0', name=op.f('ck_accounts_held_not_negative')),
    sa.ForeignKeyConstraint(['cardholder_id'], ['cardholders.id'], name=op.f('fk_accounts_cardholder_id_cardholders')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_accounts')),
    sa.UniqueConstraint('purpose', 'currency', name=op.f('uq_accounts_purpose_currency'))
    )
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_accounts_cardholder_id'), ['cardholder_id'], unique=False)

    op.create_table('terminals',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('terminal_id', sa.String(length=8), nullable=False),
    sa.Column('merchant_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('key_scheme', sa.String(length=32), nullable=True),
    sa.Column('bdk_kcv', sa.String(length=16), nullable=True),
    sa.Column('initial_ksn', sa.String(length=24), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['merchant_id'], ['merchants.id'], name=op.f('fk_terminals_merchant_id_merchants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_terminals')),
    sa.UniqueConstraint('terminal_id', name=op.f('uq_terminals_terminal_id'))
    )
    with op.batch_alter_table('terminals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_terminals_merchant_id'), ['merchant_id'], unique=False)

    op.create_table('cards',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('product', sa.String(length=32), nullable=False),
    sa.Column('token', sa.String(length=19), nullable=False),
    sa.Column('last4', sa.String(length=4), nullable=False),
    sa.Column('pan_fingerprint', sa.String(length=128), nullable=False),
    sa.Column('fingerprint_version', sa.Integer(), nullable=False),
    sa.Column('sealed_pan', sa.Text(), nullable=False),
    sa.Column('data_key_version', sa.Integer(), nullable=False),
    sa.Column('expiry', sa.String(length=4), nullable=False),
    sa.Column('service_code', sa.String(length=3), nullable=False),
    sa.Column('psn', sa.String(length=3), nullable=False),
    sa.Column('pin_method', sa.String(length=8), nullable=True),
    sa.Column('pin_value', sa.String(length=32), nullable=True),
    sa.Column('pin_tries', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('replaced_by_card_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.CheckConstraint("pin_method IS NULL OR pin_method IN ('pvv', 'ibm3624')", name=op.f('ck_cards_pin_method')),
    sa.CheckConstraint("status IN ('inactive', 'active', 'frozen', 'lost', 'stolen', 'closed', 'expired')", name=op.f('ck_cards_status')),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_cards_account_id_accounts')),
    sa.ForeignKeyConstraint(['replaced_by_card_id'], ['cards.id'], name=op.f('fk_cards_replaced_by_card_id_cards')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cards')),
    sa.UniqueConstraint('pan_fingerprint', name=op.f('uq_cards_pan_fingerprint')),
    sa.UniqueConstraint('token', name=op.f('uq_cards_token'))
    )
    with op.batch_alter_table('cards', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_cards_account_id'), ['account_id'], unique=False)

    op.create_table('postings',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('entry_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('amount_minor', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_postings_account_id_accounts')),
    sa.ForeignKeyConstraint(['entry_id'], ['journal_entries.id'], name=op.f('fk_postings_entry_id_journal_entries')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_postings'))
    )
    with op.batch_alter_table('postings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_postings_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_postings_entry_id'), ['entry_id'], unique=False)

    op.create_table('holds',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('card_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('auth_id', sa.BigInteger(), nullable=True),
    sa.Column('amount_minor', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('forced', sa.Boolean(), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('captured_minor', sa.BigInteger(), nullable=True),
    sa.CheckConstraint("status IN ('active', 'captured', 'released', 'expired')", name=op.f('ck_holds_status')),
    sa.CheckConstraint('amount_minor >= 0', name=op.f('ck_holds_amount_not_negative')),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_holds_account_id_accounts')),
    sa.ForeignKeyConstraint(['card_id'], ['cards.id'], name=op.f('fk_holds_card_id_cards')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_holds'))
    )
    with op.batch_alter_table('holds', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_holds_account_id'), ['account_id'], unique=False)
        batch_op.create_index('ix_holds_status_expires_at', ['status', 'expires_at'], unique=False)

    op.create_table('auths',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('idem_key', sa.String(length=255), nullable=False),
    sa.Column('op', sa.String(length=16), nullable=False),
    sa.Column('mti', sa.String(length=8), nullable=False),
    sa.Column('terminal_id', sa.String(length=16), nullable=False),
    sa.Column('stan', sa.String(length=12), nullable=False),
    sa.Column('rrn', sa.String(length=24), nullable=False),
    sa.Column('card_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('amount_minor', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('rc', sa.String(length=2), nullable=False),
    sa.Column('approved_minor', sa.BigInteger(), nullable=False),
    sa.Column('auth_code', sa.String(length=8), nullable=True),
    sa.Column('reason', sa.String(length=200), nullable=False),
    sa.Column('hold_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('entry_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('original_auth_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('reversed', sa.Boolean(), nullable=False),
    sa.Column('ledger_minor', sa.BigInteger(), nullable=True),
    sa.Column('available_minor', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_auths_account_id_accounts')),
    sa.ForeignKeyConstraint(['card_id'], ['cards.id'], name=op.f('fk_auths_card_id_cards')),
    sa.ForeignKeyConstraint(['entry_id'], ['journal_entries.id'], name=op.f('fk_auths_entry_id_journal_entries')),
    sa.ForeignKeyConstraint(['hold_id'], ['holds.id'], name=op.f('fk_auths_hold_id_holds')),
    sa.ForeignKeyConstraint(['original_auth_id'], ['auths.id'], name=op.f('fk_auths_original_auth_id_auths')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_auths')),
    sa.UniqueConstraint('idem_key', name=op.f('uq_auths_idem_key'))
    )
    with op.batch_alter_table('auths', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_auths_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_auths_card_id'), ['card_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_auths_hold_id'), ['hold_id'], unique=False)



def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('auths', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_auths_hold_id'))
        batch_op.drop_index(batch_op.f('ix_auths_card_id'))
        batch_op.drop_index(batch_op.f('ix_auths_account_id'))

    op.drop_table('auths')
    with op.batch_alter_table('holds', schema=None) as batch_op:
        batch_op.drop_index('ix_holds_status_expires_at')
        batch_op.drop_index(batch_op.f('ix_holds_account_id'))

    op.drop_table('holds')
    with op.batch_alter_table('postings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_postings_entry_id'))
        batch_op.drop_index(batch_op.f('ix_postings_account_id'))

    op.drop_table('postings')
    with op.batch_alter_table('cards', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cards_account_id'))

    op.drop_table('cards')
    with op.batch_alter_table('terminals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_terminals_merchant_id'))

    op.drop_table('terminals')
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_accounts_cardholder_id'))

    op.drop_table('accounts')
    op.drop_table('merchants')
    op.drop_table('journal_entries')
    op.drop_table('config')
    op.drop_table('cardholders')
