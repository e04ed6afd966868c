"""support assistant: settings, conversations, order fulfilment status

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 17:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('shops', schema=None) as batch_op:
        batch_op.add_column(sa.Column('assistant', sa.JSON(), server_default='{}', nullable=False))
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fulfillment_status', sa.String(length=32), nullable=True))
    op.create_table(
        'conversations',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('shop_id', sa.Integer(), nullable=False),
        sa.Column('session_id', sa.String(length=64), nullable=False),
        sa.Column('customer_ref', sa.String(length=64), nullable=False),
        sa.Column('messages', sa.JSON(), nullable=False),
        sa.Column('handoff', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['shop_id'], ['shops.id'], name=op.f('fk_conversations_shop_id_shops'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_conversations')),
        sa.UniqueConstraint('shop_id', 'session_id', 'customer_ref', name='uq_conversations_session'),
    )
    op.create_index('ix_conversations_shop_updated', 'conversations', ['shop_id', 'updated_at'], unique=False)
    op.create_index(op.f('ix_conversations_customer_ref'), 'conversations', ['customer_ref'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_conversations_customer_ref'), table_name='conversations')
    op.drop_index('ix_conversations_shop_updated', table_name='conversations')
    op.drop_table('conversations')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('fulfillment_status')
    with op.batch_alter_table('shops', schema=None) as batch_op:
        batch_op.drop_column('assistant')
