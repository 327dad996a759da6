"""job runs: heartbeat, worker, attempt, retry_of (dead-worker detection)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 12:00:00
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('job_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('worker', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('attempt', sa.Integer(), server_default='1', nullable=False))
        batch_op.add_column(sa.Column('retry_of', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_job_runs_retry_of'), ['retry_of'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_job_runs_retry_of_job_runs'), 'job_runs', ['retry_of'], ['id'])


def downgrade() -> None:
    # Code before 0002 knows no 'lost' status and would wait on such a run forever.
    op.execute("UPDATE job_runs SET status = 'failed' WHERE status = 'lost'")
    with op.batch_alter_table('job_runs', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_job_runs_retry_of_job_runs'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_job_runs_retry_of'))
        batch_op.drop_column('retry_of')
        batch_op.drop_column('attempt')
        batch_op.drop_column('worker')
        batch_op.drop_column('heartbeat_at')
