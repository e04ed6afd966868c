"""publication: whether each product is published to the Online Store sales channel

A product the merchant takes off the Online Store stays ACTIVE; only its publication says shoppers cannot see
it. Rows synced before this revision were synced as visible: they start published (the next sync or product
webhook corrects any that are not).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 10:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.add_column(sa.Column('published', sa.Boolean(), server_default=sa.true(), nullable=False))
    op.create_index('ix_products_storefront', 'products', ['shop_id', 'status', 'published'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_products_storefront', table_name='products')
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_column('published')
