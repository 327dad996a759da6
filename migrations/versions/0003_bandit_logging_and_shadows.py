"""bandit logging (action distribution, explored), shadow routers, gate decisions

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 23:10:00
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('action_probs', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('explored', sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table('router_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('shadow_share', sa.Float(), nullable=True))
    op.create_table(
        'shadow_decisions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('request_id', sa.String(length=36), nullable=False),
        sa.Column('router_version_id', sa.Integer(), nullable=False),
        sa.Column('expert', sa.String(length=200), nullable=False),
        sa.Column('served_expert', sa.String(length=200), nullable=False),
        sa.Column('predicted_losses', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['router_version_id'], ['router_versions.id'],
                                name=op.f('fk_shadow_decisions_router_version_id_router_versions')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_shadow_decisions')),
        sa.UniqueConstraint('request_id', 'router_version_id', name='uq_shadow_decisions_key'),
    )
    with op.batch_alter_table('shadow_decisions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_shadow_decisions_router_version_id'), ['router_version_id'], unique=False)
    op.create_table(
        'gate_decisions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('router_version_id', sa.Integer(), nullable=False),
        sa.Column('active_version_id', sa.Integer(), nullable=True),
        sa.Column('decision', sa.String(length=20), nullable=False),
        sa.Column('basis', sa.String(length=20), nullable=False),
        sa.Column('numbers', sa.JSON(), nullable=False),
        sa.Column('actor', sa.String(length=200), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['router_version_id'], ['router_versions.id'],
                                name=op.f('fk_gate_decisions_router_version_id_router_versions')),
        sa.ForeignKeyConstraint(['active_version_id'], ['router_versions.id'],
                                name=op.f('fk_gate_decisions_active_version_id_router_versions')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_gate_decisions')),
    )
    with op.batch_alter_table('gate_decisions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_gate_decisions_router_version_id'), ['router_version_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('gate_decisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_gate_decisions_router_version_id'))
    op.drop_table('gate_decisions')
    with op.batch_alter_table('shadow_decisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_shadow_decisions_router_version_id'))
    op.drop_table('shadow_decisions')
    with op.batch_alter_table('router_versions', schema=None) as batch_op:
        batch_op.drop_column('shadow_share')
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.drop_column('explored')
        batch_op.drop_column('action_probs')
