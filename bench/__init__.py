"""Benchmark of the function against a tutorial-style baseline and a no-model floor.

Not deployed. ``make bench`` (``python -m bench``) runs it on the local stack; see
the README's "Speed" section for what it measures and how.
"""
