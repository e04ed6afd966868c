"""merchandising: pins and exclusions, recommendation ratings, retraining schedule and A/B holdout settings

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 23:40:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('shops', schema=None) as batch_op:
        batch_op.add_column(sa.Column('schedule', sa.JSON(), server_default='{}', nullable=False))
        batch_op.add_column(sa.Column('experiment', sa.JSON(), server_default='{}', nullable=False))
    op.create_table(
        'merchandising_rules',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('shop_id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('product_id', sa.BigInteger(), nullable=True),
        sa.Column('other_id', sa.BigInteger(), nullable=True),
        sa.Column('product_type', sa.String(length=255), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['shop_id'], ['shops.id'], name=op.f('fk_merchandising_rules_shop_id_shops'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_merchandising_rules')),
    )
    op.create_index(op.f('ix_merchandising_rules_shop_id'), 'merchandising_rules', ['shop_id'], unique=False)
    op.create_table(
        'recommendation_ratings',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('shop_id', sa.Integer(), nullable=False),
        sa.Column('viewed_product_id', sa.BigInteger(), nullable=False),
        sa.Column('product_id', sa.BigInteger(), nullable=False),
        sa.Column('model_version', sa.Integer(), nullable=False),
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.Column('rating', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['shop_id'], ['shops.id'], name=op.f('fk_recommendation_ratings_shop_id_shops'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_recommendation_ratings')),
        sa.UniqueConstraint('shop_id', 'viewed_product_id', 'product_id', 'model_version',
                            name='uq_recommendation_ratings_pair'),
    )


def downgrade() -> None:
    op.drop_table('recommendation_ratings')
    op.drop_index(op.f('ix_merchandising_rules_shop_id'), table_name='merchandising_rules')
    op.drop_table('merchandising_rules')
    with op.batch_alter_table('shops', schema=None) as batch_op:
        batch_op.drop_column('experiment')
        batch_op.drop_column('schedule')
