"""A serving process's start: what it loads before shoppers arrive, and whether it is ready for them."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import select

from core import embeddings
from core.assistant import understanding
from core.llm.model_hosts import ModelUnavailable, host_for
from core.storage.models import ModelVersion, db

log = logging.getLogger(__name__)


def warm_up(app) -> threading.Thread:
    """Load, in the background as a server starts, what a storefront request would otherwise wait for: the
    sentence encoder, the assistant's question reader and, on the embedded host, every shop's live model (in
    this serving process)."""
    def load() -> None:
        embeddings.encoder()
        with app.app_context():
            understanding.reader()
            host = host_for(app)
            if host.name != "embedded":
                return
            for model in db.session.scalars(select(ModelVersion).where(ModelVersion.status == "deployed")):
                try:
                    host.load(model.gguf_path)
                except ModelUnavailable as exc:
                    log.warning("live model v%s of shop %s not loaded: %s", model.version, model.shop_id, exc)
            db.session.remove()

    thread = threading.Thread(target=load, name="pairwell-warm-up", daemon=True)
    thread.start()
    return thread


def readiness(app) -> dict:
    """Whether this process can answer shoppers at full speed: the encoder is loaded and so is every live model
    (on the embedded host; an Ollama host must answer). A load balancer sends traffic once it is ready."""
    host = host_for(app)
    with app.app_context():
        live = db.session.scalars(select(ModelVersion).where(ModelVersion.status == "deployed")).all()
        if host.name == "embedded":
            models = {f"{m.shop_id}:v{m.version}": host.is_loaded(m.gguf_path) for m in live}
        else:
            models = {f"{m.shop_id}:v{m.version}": host.health() for m in live}
    encoder = embeddings.encoder_loaded()
    return {"ready": encoder and all(models.values()), "encoder": encoder, "models": models}
