"""reply generation: the shop's cached storefront replies are valid only for the generation they were built at

A cached reply carries the generation it was built from and is refused once the shop's generation has moved
(a product webhook, a sync, a rule, a rating, a deploy, a redaction). It lives in the database, so a bump
reaches every process whether or not Redis was reachable when it happened.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 09:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('shops', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reply_generation', sa.BigInteger(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('shops', schema=None) as batch_op:
        batch_op.drop_column('reply_generation')
