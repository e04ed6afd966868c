"""neighbour lists: each product's nearest products by each retrieval signal, computed by workers, merged by
the storefront (core/neighbours.py)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 10:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'neighbour_lists',
        sa.Column('shop_id', sa.Integer(), nullable=False),
        sa.Column('product_id', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('popularity', sa.Float(), nullable=False),
        sa.Column('cold', sa.Boolean(), nullable=False),
        sa.Column('lists', sa.LargeBinary(), nullable=False),
        sa.Column('asking', sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(['shop_id'], ['shops.id'], name=op.f('fk_neighbour_lists_shop_id_shops'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('shop_id', 'product_id', name=op.f('pk_neighbour_lists')),
    )
    op.create_table(
        'retrieval_builds',
        sa.Column('shop_id', sa.Integer(), nullable=False),
        sa.Column('weights', sa.JSON(), nullable=False),
        sa.Column('several', sa.JSON(), nullable=False),
        sa.Column('popular', sa.JSON(), nullable=False),
        sa.Column('products', sa.Integer(), nullable=False),
        sa.Column('seconds', sa.Float(), nullable=False),
        sa.Column('built_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('changed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('queued_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['shop_id'], ['shops.id'], name=op.f('fk_retrieval_builds_shop_id_shops'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('shop_id', name=op.f('pk_retrieval_builds')),
    )


def downgrade() -> None:
    op.drop_table('retrieval_builds')
    op.drop_table('neighbour_lists')
