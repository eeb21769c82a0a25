"""Template tags of the device registry."""
