"""Serving checkpoints over HTTP (`genforge serve`); see `app.py`."""
