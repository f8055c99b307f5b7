"""Add the customer-group (客户群) handover of offboardings: one row per leaver's group
(customer_group_handover) and the per-offboarding listing and claim (customer_group_scan).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 15:00:00.000000

"""
from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('customer_group_handover',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('offboarding_id', sa.Integer(), nullable=False),
    sa.Column('chat_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('from_userid', sa.String(length=64), nullable=False),
    sa.Column('successor', sa.String(length=64), nullable=True),
    sa.Column('method', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('errcode', sa.Integer(), nullable=True),
    sa.Column('errmsg', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('manual_action_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_customer_group_handover')),
    sa.UniqueConstraint('offboarding_id', 'chat_id', name=op.f('uq_customer_group_handover_offboarding_id_chat_id'))
    )
    with op.batch_alter_table('customer_group_handover', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_customer_group_handover_offboarding_id'), ['offboarding_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_customer_group_handover_state'), ['state'], unique=False)

    op.create_table('customer_group_scan',
    sa.Column('offboarding_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('userid', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('listed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('members_scanned_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('fence', sa.String(length=32), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('offboarding_id', name=op.f('pk_customer_group_scan'))
    )
    with op.batch_alter_table('customer_group_scan', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_customer_group_scan_state'), ['state'], unique=False)


def downgrade():
    with op.batch_alter_table('customer_group_scan', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_customer_group_scan_state'))

    op.drop_table('customer_group_scan')
    with op.batch_alter_table('customer_group_handover', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_customer_group_handover_state'))
        batch_op.drop_index(batch_op.f('ix_customer_group_handover_offboarding_id'))

    op.drop_table('customer_group_handover')
