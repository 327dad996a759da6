"""expert versions (fine-tuned candidates) and their activation log

Revision ID: 0005
Revises: 0003
Create Date: 2026-11-23 23:30:00
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'expert_versions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('expert', sa.String(length=200), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('parent_version', sa.Integer(), nullable=True),
        sa.Column('uri', sa.Text(), nullable=False),
        sa.Column('content_hash', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('training', sa.JSON(), nullable=False),
        sa.Column('metrics', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('decided_by', sa.String(length=200), nullable=True),
        sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_expert_versions')),
        sa.UniqueConstraint('expert', 'version', name='uq_expert_versions_key'),
    )
    with op.batch_alter_table('expert_versions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_expert_versions_expert'), ['expert'], unique=False)
    op.create_table(
        'expert_activations',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('expert', sa.String(length=200), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('previous_version', sa.Integer(), nullable=True),
        sa.Column('actor', sa.String(length=200), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_expert_activations')),
    )
    with op.batch_alter_table('expert_activations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_expert_activations_expert'), ['expert'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('expert_activations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_expert_activations_expert'))
    op.drop_table('expert_activations')
    with op.batch_alter_table('expert_versions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_expert_versions_expert'))
    op.drop_table('expert_versions')
