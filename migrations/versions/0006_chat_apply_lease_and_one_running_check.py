"""Add the per-chat apply lease (chat_apply_lease) and one running member check at a time.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 09:00:00.000000

"""
from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('chat_apply_lease',
    sa.Column('group_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('fence', sa.String(length=32), nullable=False),
    sa.Column('holder', sa.String(length=128), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('group_id', name=op.f('pk_chat_apply_lease'))
    )
    # A check left "running" by a crash must not block the index: mark the old ones abandoned.
    op.execute("UPDATE membership_check SET state = 'abandoned', error = 'abandoned: its process stopped' "
               "WHERE state = 'running' AND id NOT IN (SELECT max(id) FROM membership_check WHERE state = 'running')")
    with op.batch_alter_table('membership_check', schema=None) as batch_op:
        batch_op.create_index('uq_membership_check_running', ['state'], unique=True, sqlite_where=sa.text("state = 'running'"), postgresql_where=sa.text("state = 'running'"))


def downgrade():
    with op.batch_alter_table('membership_check', schema=None) as batch_op:
        batch_op.drop_index('uq_membership_check_running', sqlite_where=sa.text("state = 'running'"), postgresql_where=sa.text("state = 'running'"))

    op.drop_table('chat_apply_lease')
