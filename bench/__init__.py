"""Benchmark of the function against a tutorial-style baseline and a no-model floor.

Not deployed. ``make bench`` (``python -m bench``) runs it on the local stack; see
docs/speed.md for what it measures and how.
"""
