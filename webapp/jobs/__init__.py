"""Compression jobs: the wizard, the Job row and its events, the live page and the REST API."""
