"""The EdgeSlim edge agent: onnxruntime, numpy and a websocket client; no Django, no torch."""

# 0.2.0: decodes compressed containers (manifest format "container"); 0.3.0: container format 3;
# 0.4.0: on close code 4001 (re-enrolled) re-reads its credential file and reconnects
__version__ = "0.4.0"
