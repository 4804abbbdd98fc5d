"""Bench-only reference: functions-framework alone, a handler that returns at once.

Not a function anyone would deploy: it measures what every variant pays before its own code
runs (HTTP parsing, the Pub/Sub push to CloudEvent conversion, Flask, gunicorn's threads), so
the benchmark can tell the framework's share of a message's CPU from the function's.
"""

import functions_framework


@functions_framework.cloud_event
def predict_duration(cloud_event):
    return None
