"""The EdgeSlim edge agent: onnxruntime, numpy and a websocket client; no Django, no torch."""

# 0.2.0: decodes compressed containers (manifest format "container"); 0.3.0: container format 3
__version__ = "0.3.0"
