"""storefront events

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 20:47:45.476574
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('storefront_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('shop_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('viewed_product_id', sa.BigInteger(), nullable=False),
    sa.Column('product_id', sa.BigInteger(), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('shown', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['shop_id'], ['shops.id'], name=op.f('fk_storefront_events_shop_id_shops'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_storefront_events'))
    )
    with op.batch_alter_table('storefront_events', schema=None) as batch_op:
        batch_op.create_index('ix_storefront_events_shop_created', ['shop_id', 'created_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('storefront_events', schema=None) as batch_op:
        batch_op.drop_index('ix_storefront_events_shop_created')

    op.drop_table('storefront_events')
