"""The WSGI entry for production servers: `gunicorn 'shopify_app.wsgi:app'`. Starts loading the sentence
encoder and the live models in the background, so the storefront's first request does not pay for them."""

from core import config
from core.readiness import warm_up

from . import create_app

app = create_app()
config.require_production(app.config)
warm_up(app)
