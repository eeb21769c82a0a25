"""Edge devices: registration, enrollment, deployments and on-device results (a Django app).

The ``agent`` subpackage is the edge agent itself; it imports neither Django nor torch.
"""
