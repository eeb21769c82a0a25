"""The EdgeSlim edge agent: onnxruntime, numpy and a websocket client; no Django, no torch."""

# 0.2.0: decodes compressed containers (manifest format "container"); 0.3.0: container format 3;
# 0.4.0: on close code 4001 (re-enrolled) re-reads its credential file and reconnects;
# 0.5.0: its own distribution (edgeslim_agent), HTTPS with a pinned certificate, key ids and
# trusted-key rotation, Ed25519 through cryptography; 0.6.0: obeys ``cancel`` (stops a cancelled
# deployment before its next batch); 0.7.0: detectors: FPS with and without post-processing
# and on-device mAP on a detection evaluation set (edgeslim_agent.detect_eval); 0.8.0: container
# format 5 (Huffman over blocks of up to 8 symbols)
__version__ = "0.8.0"
