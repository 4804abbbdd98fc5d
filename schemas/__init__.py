"""The message contract's published JSON Schemas (generated from ``features.py``)."""
