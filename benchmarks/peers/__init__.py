"""Hand-written 202 + status endpoints, the way Celery's and RQ's docs suggest."""
