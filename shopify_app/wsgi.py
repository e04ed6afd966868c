"""The WSGI entry for production servers: `gunicorn 'shopify_app.wsgi:app'`. Starts loading the sentence
encoder in the background, so the storefront's first request does not pay for it."""

from worker.embeddings import warm_up

from . import create_app

app = create_app()
warm_up()
