"""The local stack: Pub/Sub and GCS emulators plus functions-framework (not deployed)."""
