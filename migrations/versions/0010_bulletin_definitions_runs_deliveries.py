"""Add bulletins (通报): definitions, one run per occurrence, one delivery per target.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26 10:00:00.000000

"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')
BIGID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade():
    op.create_table('bulletin',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('message', JSON, nullable=False),
    sa.Column('targets', JSON, nullable=False),
    sa.Column('schedule', JSON, nullable=False),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('confidential', sa.Boolean(), nullable=False),
    sa.Column('quiet_policy', sa.String(length=8), nullable=False),
    sa.Column('misfire_grace_seconds', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=8), nullable=False),
    sa.Column('owner', sa.String(length=128), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_bulletin')),
    sa.UniqueConstraint('name', name=op.f('uq_bulletin_name')),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('bulletin', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_bulletin_state'), ['state'], unique=False)

    op.create_table('bulletin_run',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('bulletin_id', sa.Integer(), nullable=False),
    sa.Column('scheduled_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('snapshot', JSON, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_bulletin_run')),
    sa.UniqueConstraint('bulletin_id', 'scheduled_at', name=op.f('uq_bulletin_run_bulletin_id_scheduled_at')),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('bulletin_run', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_bulletin_run_bulletin_id'), ['bulletin_id'], unique=False)

    op.create_table('bulletin_delivery',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('delivery_id', sa.String(length=32), nullable=False),
    sa.Column('run_id', sa.BigInteger(), nullable=False),
    sa.Column('bulletin_id', sa.Integer(), nullable=False),
    sa.Column('target', sa.String(length=64), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('scheduled_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deadline_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('errcode', sa.Integer(), nullable=True),
    sa.Column('msgid', sa.String(length=128), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('resend_of', sa.BigInteger(), nullable=True),
    sa.Column('job_id', sa.BigInteger(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_bulletin_delivery')),
    sa.UniqueConstraint('delivery_id', name=op.f('uq_bulletin_delivery_delivery_id')),
    sa.UniqueConstraint('run_id', 'target', 'attempt', name=op.f('uq_bulletin_delivery_run_id_target_attempt')),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('bulletin_delivery', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_bulletin_delivery_bulletin_id'), ['bulletin_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_bulletin_delivery_run_id'), ['run_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_bulletin_delivery_state'), ['state'], unique=False)


def downgrade():
    op.drop_table('bulletin_delivery')
    op.drop_table('bulletin_run')
    op.drop_table('bulletin')
