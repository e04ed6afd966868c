"""The Celery app, bound to a Flask app so every task runs inside its app context (Flask's own pattern).

Without `REDIS_URL` tasks run in-process (eagerly), which is how the demo and SQLite setups work.
"""

from __future__ import annotations

from celery import Celery, Task
from flask import Flask

ROUTES = {name: {"queue": "gpu"} for name in ("worker.tasks.train", "worker.tasks.export", "worker.tasks.gate")}
"""The one routing table: the model stages need the GPU box, everything else goes to `default`."""


def celery_init_app(app: Flask) -> Celery:
    class FlaskTask(Task):
        def __call__(self, *args, **kwargs):
            with app.app_context():
                return self.run(*args, **kwargs)

    redis_url = app.config["REDIS_URL"]
    celery = Celery(app.name, task_cls=FlaskTask)
    celery.conf.update(
        broker_url=redis_url or "memory://",
        result_backend=redis_url,
        task_always_eager=redis_url is None,
        task_ignore_result=True,  # stages record on their rows; no publish waits on a result store
        task_eager_propagates=True,
        task_default_queue="default",
        task_routes=ROUTES,
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        # Publishing must not hang a web request when Redis is down: fail fast, the sweeper sends it later.
        broker_connection_timeout=1.0,
        broker_transport_options={"socket_connect_timeout": 1.0, "socket_timeout": 2.0, "max_retries": 1,
                                  "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2},
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2},
        redis_socket_connect_timeout=1.0,
        redis_socket_timeout=2.0,
        beat_schedule={"sweep": {"task": "worker.tasks.sweep", "schedule": app.config["SWEEP_EVERY_SECONDS"]},
                       "retrain": {"task": "worker.tasks.retrain_on_schedule", "schedule": 3600.0}},
        include=["worker.tasks"],
    )
    celery.flask_app = app
    celery.set_default()
    app.extensions["celery"] = celery
    return celery
