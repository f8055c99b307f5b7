"""Add offboarding by employee number (工号): the imported mapping table (employee_number) and the
directory field's value on the mirror (person.employee_id, from EMPLOYEE_ID_FIELD).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 10:00:00.000000

"""
from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('employee_number',
    sa.Column('employee_id', sa.String(length=128), nullable=False),
    sa.Column('userid', sa.String(length=64), nullable=False),
    sa.Column('person_id', sa.Integer(), nullable=True),
    sa.Column('imported_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('source', sa.String(length=255), nullable=False),
    sa.PrimaryKeyConstraint('employee_id', name=op.f('pk_employee_number'))
    )
    with op.batch_alter_table('employee_number', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_employee_number_person_id'), ['person_id'], unique=False)

    with op.batch_alter_table('person', schema=None) as batch_op:
        batch_op.add_column(sa.Column('employee_id', sa.String(length=128), nullable=True))
        batch_op.create_index(batch_op.f('ix_person_employee_id'), ['employee_id'], unique=False)


def downgrade():
    with op.batch_alter_table('person', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_person_employee_id'))
        batch_op.drop_column('employee_id')

    with op.batch_alter_table('employee_number', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_employee_number_person_id'))

    op.drop_table('employee_number')
