"""the ranking head kept with a shop's neighbour lists, so the storefront re-orders a cart's candidates as the
full index does (core/recommendations/neighbours.py ListedHead)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 14:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('retrieval_builds') as batch:
        batch.add_column(sa.Column('head', sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('retrieval_builds') as batch:
        batch.drop_column('head')
