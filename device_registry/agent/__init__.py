"""The EdgeSlim edge agent: onnxruntime, numpy and a websocket client; no Django, no torch."""

__version__ = "0.2.0"  # 0.2.0: decodes compressed containers (manifest format "container")
