"""The ride-duration predictor's core, shared by the Cloud Run function (``main.py``) and the
AWS Lambda (``aws/lambda_function.py``): one job per module, imports in one direction
(README, "Layout"; docs/design.md, "The package"). Importing the package imports nothing else.
"""
