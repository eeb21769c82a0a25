"""Celery side of EdgeSlim: the app, thin tasks, and the runner that drives ``compression/``."""
