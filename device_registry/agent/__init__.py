"""The EdgeSlim edge agent: onnxruntime, numpy and a websocket client; no Django, no torch."""

__version__ = "0.1.0"
