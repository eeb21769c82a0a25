"""Fixtures of the device registry tests (its folder is on sys.path for ``device_onnx``)."""
