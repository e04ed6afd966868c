"""The database: shops and the catalog and orders synced from them.

Catalog and order rows are keyed by (shop_id, Shopify numeric id), so a sync upserts without look-ups
and a webhook can address a row directly. Customers are kept only as opaque ids.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import Decimal

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    and_,
    event,
    true,
)
from sqlalchemy.engine import Engine
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


db = SQLAlchemy(model_class=Base)


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, _record):
    """SQLite: enforce foreign keys (cascades) and let readers run beside the writer."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()


def locked_shop(shop_id: int) -> Shop | None:
    """The shop's row, locked until this transaction ends: the one lock every read-modify-write of a shop's
    shared rows takes first (settings, rules, ratings, a conversation, starting a job), so whatever it reads
    after this is current and nobody else writes it meanwhile. Postgres locks the row (FOR UPDATE); SQLite
    ignores FOR UPDATE, so there the transaction begins by taking the database's one write lock (BEGIN
    IMMEDIATE; the driver opens a transaction only before a write, so an open one already holds that lock)."""
    connection = db.session.connection()
    if connection.dialect.name == "sqlite" and not connection.connection.driver_connection.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    return db.session.get(Shop, shop_id, with_for_update=True, populate_existing=True)


@contextmanager
def shop_lock(shop_id: int) -> Iterator[Shop | None]:
    """`locked_shop` for a block: committed at its end (the lock goes with it), rolled back on any exception
    (a refusal included)."""
    try:
        yield locked_shop(shop_id)
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise


class Timestamp(TypeDecorator):
    """Timezone-aware UTC on every database (SQLite drops the zone, so it is put back on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime: pass an aware UTC datetime")
            value = value.astimezone(timezone.utc)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Shop(db.Model):
    __tablename__ = "shops"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain: Mapped[str] = mapped_column(String(255), unique=True)
    access_token_encrypted: Mapped[str | None] = mapped_column(Text)
    access_token_expires_at: Mapped[datetime | None] = mapped_column(Timestamp())
    refresh_token_encrypted: Mapped[str | None] = mapped_column(Text)
    refresh_token_expires_at: Mapped[datetime | None] = mapped_column(Timestamp())
    scopes: Mapped[str] = mapped_column(Text, default="")
    # The merchant's policies by kind (shipping, returns, invoices, payment, discounts): support answers cite them.
    currency: Mapped[str] = mapped_column(String(3), default="", server_default="")  # ISO 4217, from the sync
    policies: Mapped[dict] = mapped_column(JSON, default=dict, server_default="{}")
    # The support assistant's settings (enabled, tone, handoff contact, discount codes): `replies.settings`.
    assistant: Mapped[dict] = mapped_column(JSON, default=dict, server_default="{}")
    # Retraining on new orders (cadence off, weekly, monthly): `core.model.schedule.settings`.
    schedule: Mapped[dict] = mapped_column(JSON, default=dict, server_default="{}")
    # The A/B holdout (the share of visitors shown co-purchase instead): `core.recommendations.experiment.settings`.
    experiment: Mapped[dict] = mapped_column(JSON, default=dict, server_default="{}")
    # Moves whenever the shop's cached storefront replies go stale: `core.recommendations.serving.forget_replies`. It
    # starts at the creation time (µs), so a shop created again under a reused id never meets old replies.
    reply_generation: Mapped[int] = mapped_column(BigInteger, default=lambda: time.time_ns() // 1000,
                                                  server_default="0")
    installed_at: Mapped[datetime | None] = mapped_column(Timestamp())
    uninstalled_at: Mapped[datetime | None] = mapped_column(Timestamp())
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)

    @property
    def is_installed(self) -> bool:
        return self.installed_at is not None and self.uninstalled_at is None and bool(self.access_token_encrypted)


class Product(db.Model):
    __tablename__ = "products"
    __table_args__ = (Index("ix_products_storefront", "shop_id", "status", "published"),)

    shop_id: Mapped[int] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    handle: Mapped[str] = mapped_column(String(255))
    title: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    product_type: Mapped[str] = mapped_column(String(255), default="")
    vendor: Mapped[str] = mapped_column(String(255), default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default="ACTIVE")
    # Published to the Online Store sales channel: a sync reads GraphQL `onlineStoreUrl` (null when not published
    # there), a products/create|update webhook its REST `published_at` (null when not). See `on_storefront`.
    published: Mapped[bool] = mapped_column(default=True, server_default=true())
    online_store_url: Mapped[str | None] = mapped_column(Text)
    image_url: Mapped[str | None] = mapped_column(Text)
    image_alt: Mapped[str | None] = mapped_column(Text)
    total_inventory: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(Timestamp())
    # The product text's sentence embedding (float32), computed at sync, on product webhooks and at deploy, and
    # the sha256 of the text it embeds: a serving process reads it instead of running the encoder.
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    embedding_sha: Mapped[str | None] = mapped_column(String(64))

    variants: Mapped[list[Variant]] = relationship(
        back_populates="product", cascade="all, delete-orphan", passive_deletes=True
    )

    @hybrid_property
    def on_storefront(self) -> bool:
        """Whether shoppers can see the product at all: ACTIVE and published to the Online Store sales channel.
        The one definition every storefront surface (the block, quick add, the chat, the admin's preview) and
        everything that learns or scores what they offer (datasets, the gate, evaluation) reads; on top of it a
        product is sellable with a variant in stock (`core.recommendations.serving.load_shelf`). Also a SQL expression:
        `select(Product).where(Product.on_storefront)`."""
        return self.status == "ACTIVE" and bool(self.published)

    @on_storefront.inplace.expression
    @classmethod
    def _on_storefront_expression(cls):
        return and_(cls.status == "ACTIVE", cls.published)


class Variant(db.Model):
    __tablename__ = "variants"
    __table_args__ = (
        ForeignKeyConstraint(
            ["shop_id", "product_id"], ["products.shop_id", "products.id"], ondelete="CASCADE"
        ),
        Index("ix_variants_product", "shop_id", "product_id"),
    )

    shop_id: Mapped[int] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    product_id: Mapped[int] = mapped_column(BigInteger)
    title: Mapped[str] = mapped_column(Text, default="")
    sku: Mapped[str | None] = mapped_column(String(255))
    price: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    inventory_quantity: Mapped[int] = mapped_column(Integer, default=0)
    available_for_sale: Mapped[bool] = mapped_column(default=True)

    product: Mapped[Product] = relationship(back_populates="variants")


class Order(db.Model):
    __tablename__ = "orders"
    __table_args__ = (Index("ix_orders_shop_created", "shop_id", "created_at"),)

    shop_id: Mapped[int] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(64), default="")
    customer_ref: Mapped[str | None] = mapped_column(String(64), index=True)
    # Shopify's displayFulfillmentStatus (UNFULFILLED, IN_PROGRESS, FULFILLED, ...): "where is my order".
    fulfillment_status: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(Timestamp())
    updated_at: Mapped[datetime] = mapped_column(Timestamp())

    lines: Mapped[list[OrderLine]] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class OrderLine(db.Model):
    """A line item. Product and variant are plain ids: orders outlive the products they name."""

    __tablename__ = "order_lines"
    __table_args__ = (
        ForeignKeyConstraint(["shop_id", "order_id"], ["orders.shop_id", "orders.id"], ondelete="CASCADE"),
        Index("ix_order_lines_order", "shop_id", "order_id"),
    )

    shop_id: Mapped[int] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    order_id: Mapped[int] = mapped_column(BigInteger)
    product_id: Mapped[int | None] = mapped_column(BigInteger)
    variant_id: Mapped[int | None] = mapped_column(BigInteger)
    quantity: Mapped[int] = mapped_column(Integer, default=1)


class SyncRun(db.Model):
    __tablename__ = "sync_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    shop_id: Mapped[int] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32), default="full")
    status: Mapped[str] = mapped_column(String(16), default="queued")
    stage: Mapped[str] = mapped_column(String(64), default="")
    progress: Mapped[float] = mapped_column(default=0.0)
    counts: Mapped[dict] = mapped_column(JSON, default=dict)
    bulk_operation_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp())
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp())


class WebhookDelivery(db.Model):
    """Every webhook we accepted, raw body kept, so nothing is lost and retries are recognised."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    webhook_id: Mapped[str] = mapped_column(String(255), unique=True)
    topic: Mapped[str] = mapped_column(String(64))
    shop_domain: Mapped[str] = mapped_column(String(255), index=True)
    api_version: Mapped[str | None] = mapped_column(String(16))
    triggered_at: Mapped[str | None] = mapped_column(String(64))
    raw_body: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16), default="received")
    result: Mapped[dict | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(Timestamp())


class TrainingRun(db.Model):
    """One pass of the pipeline for a shop: dataset → train → export. The admin reads progress from here."""

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    shop_id: Mapped[int] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    stage: Mapped[str] = mapped_column(String(32), default="")
    base_model: Mapped[str] = mapped_column(Text, default="")
    dataset_version: Mapped[str | None] = mapped_column(String(64))
    dataset_stats: Mapped[dict] = mapped_column(JSON, default=dict)
    hyperparameters: Mapped[dict] = mapped_column(JSON, default=dict)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    loss: Mapped[float | None] = mapped_column()
    eval_loss: Mapped[float | None] = mapped_column()
    tokens_per_second: Mapped[float | None] = mapped_column()
    eta_seconds: Mapped[float | None] = mapped_column()
    history: Mapped[list[dict]] = mapped_column(JSON, default=list)
    artifact_dir: Mapped[str | None] = mapped_column(Text)
    # The stretch of the chain asked for ({first, last, and stage options}), so a run can be sent again.
    plan: Mapped[dict] = mapped_column(JSON, default=dict, server_default="{}")
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    error: Mapped[str | None] = mapped_column(Text)
    heartbeat_at: Mapped[datetime | None] = mapped_column(Timestamp())
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp())


class ModelVersion(db.Model):
    """A verified GGUF ready to serve: where it is, what it came from, how it scored."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    shop_id: Mapped[int] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"), index=True)
    training_run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id", ondelete="SET NULL"))
    version: Mapped[int] = mapped_column(Integer)
    gguf_path: Mapped[str] = mapped_column(Text)
    quantization: Mapped[str] = mapped_column(String(16))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    base_model: Mapped[str] = mapped_column(Text)
    dataset_version: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="verified")
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)
    deployed_at: Mapped[datetime | None] = mapped_column(Timestamp())


class MerchandisingRule(db.Model):
    """The merchant's word over the ranking: `pin` other_id to product_id's block, `exclude` product_id from
    every block, `exclude_type` every product of product_type, `exclude_pair` product_id and other_id from
    each other's block."""

    __tablename__ = "merchandising_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    shop_id: Mapped[int] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    product_id: Mapped[int | None] = mapped_column(BigInteger)
    other_id: Mapped[int | None] = mapped_column(BigInteger)
    product_type: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)


class RecommendationRating(db.Model):
    """The merchant's hand-scored relevance of one recommendation (1 unrelated, 2 plausible, 3 pairs well), for
    the model version that was live (0: none), so a version's card shows its score and training can use it."""

    __tablename__ = "recommendation_ratings"
    __table_args__ = (UniqueConstraint("shop_id", "viewed_product_id", "product_id", "model_version",
                                       name="uq_recommendation_ratings_pair"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    shop_id: Mapped[int] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"))
    viewed_product_id: Mapped[int] = mapped_column(BigInteger)
    product_id: Mapped[int] = mapped_column(BigInteger)
    model_version: Mapped[int] = mapped_column(Integer, default=0)
    source: Mapped[str] = mapped_column(String(16), default="")
    rating: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)


class StorefrontEvent(db.Model):
    """What shoppers did with the "pairs well with" block: it was shown (impression), a product in it was
    clicked, or a clicked product was then added to the cart. `source` is where the block's products came
    from (model, cache, fallback), so the model's effect can be read against the fallback's."""

    __tablename__ = "storefront_events"
    __table_args__ = (Index("ix_storefront_events_shop_created", "shop_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    shop_id: Mapped[int] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    viewed_product_id: Mapped[int] = mapped_column(BigInteger)
    product_id: Mapped[int | None] = mapped_column(BigInteger)  # the recommended product (click, add to cart)
    source: Mapped[str] = mapped_column(String(16), default="unknown")
    shown: Mapped[int] = mapped_column(Integer, default=0)  # products in the block (impression)
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)


class Conversation(db.Model):
    """A shopper's chat with the support assistant, per shop and chat session: shown to the merchant (handoffs
    first), taken into the next fine-tune, deleted with the customer. `customer_ref` is the signed-in customer
    ("" for a guest), part of the key, so a session id reused by someone else starts a conversation of its own."""

    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_shop_updated", "shop_id", "updated_at"),
                      UniqueConstraint("shop_id", "session_id", "customer_ref", name="uq_conversations_session"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    shop_id: Mapped[int] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(String(64))
    customer_ref: Mapped[str] = mapped_column(String(64), default="", index=True)
    # [{role, content, at} + for the assistant: strategy, source (model|facts), facts, checks (failed guardrails)}]
    messages: Mapped[list[dict]] = mapped_column(JSON, default=list)
    handoff: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)


class NeighbourList(db.Model):
    """A product's nearest products by each retrieval signal, with their scores (`neighbours.py`): what a
    storefront request merges instead of building the store's index. Written whole by a worker's build."""

    __tablename__ = "neighbour_lists"

    shop_id: Mapped[int] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"), primary_key=True)
    product_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    popularity: Mapped[float] = mapped_column(Float)
    cold: Mapped[bool] = mapped_column()  # too few orders for co-purchase to judge it
    lists: Mapped[bytes] = mapped_column(LargeBinary)  # `core.recommendations.neighbours.Neighbours.pack`
    asking: Mapped[bytes | None] = mapped_column(LargeBinary)  # its need as the complements read it (float32)


class RetrievalBuild(db.Model):
    """A shop's last build of its neighbour lists: the blend's weights (chosen on its validation split) and the
    facts the storefront reads with the lists (`built_at` None: never built yet). `changed_at`: the catalog or
    orders moved since, so the sweeper has it built again; `queued_at`: when it did (once, not every minute)."""

    __tablename__ = "retrieval_builds"

    shop_id: Mapped[int] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"), primary_key=True)
    weights: Mapped[dict] = mapped_column(JSON, default=dict)
    several: Mapped[list[str]] = mapped_column(JSON, default=list)  # types shoppers buy several of at once
    popular: Mapped[list[list]] = mapped_column(JSON, default=list)  # best-sellers: [id, popularity, new], best first
    products: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    built_at: Mapped[datetime | None] = mapped_column(Timestamp())
    changed_at: Mapped[datetime | None] = mapped_column(Timestamp())
    queued_at: Mapped[datetime | None] = mapped_column(Timestamp())
    # The ranking head as the lists serve it (`RankingHead.stored`, JSON, zlib): read once a build by a process
    # that serves the shop, so not with every request's row.
    head: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
