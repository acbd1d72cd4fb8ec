"""Live pages: the tap's digests pushed to browsers over websockets (see hub.py)."""
