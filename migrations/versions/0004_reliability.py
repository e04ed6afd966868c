"""training run plans, stored product embeddings

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 14:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('plan', sa.JSON(), server_default='{}', nullable=False))
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.add_column(sa.Column('embedding', sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column('embedding_sha', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_column('embedding_sha')
        batch_op.drop_column('embedding')
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.drop_column('plan')
