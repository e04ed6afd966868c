"""Background work: the Celery app and the pipeline stages its tasks run."""
