"""EdgeSlim's pure compression library.

Imports nothing from Django, Celery, Channels or plotly, and nothing else of EdgeSlim's.
This package's ``__init__`` stays import-light on purpose: the edge agent imports
``compression.latency`` (numpy and onnxruntime only) without pulling in torch.
"""
