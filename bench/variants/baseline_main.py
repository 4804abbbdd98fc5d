"""Bench-only baseline: the tutorial's Cloud Function, written the tutorial's way.

Sections 05 and 07 of ``seed/streaming-ml-deployment.md``: everything is imported and the model
loaded with ``mlflow.pyfunc`` at import time, ``model.predict(features)`` is called with one
feature dict per message and every publish waits on ``publish(...).result()`` with the client's
default batch settings. The only departures: the model URI, project and topic come from the
environment (the tutorial hard-codes them), there is no key file (ADC, or the emulators
locally), and the event is read as ``cloud_event.data`` (what functions-framework passes;
the tutorial's ``cloud_event["data"]`` only works with the plain dict of its ``test.py``).

The model it loads must have no signature, as the course's models had none: with one, pyfunc's
schema enforcement turns the dict into a DataFrame, which a ``DictVectorizer`` cannot read.
"""

import base64
import json
import os

import functions_framework
import mlflow
import mlflow.pyfunc
from google.cloud import pubsub_v1

publisher = pubsub_v1.PublisherClient()
PROJECT_ID = os.getenv("PROJECT_ID", "mlops-demo-408506")
TOPIC_NAME = os.getenv("PUBLISH_STREAM", "ride-predictions")
topic_path = publisher.topic_path(PROJECT_ID, TOPIC_NAME)

# Load model
logged_model = os.environ["MODEL_URI"]
model = mlflow.pyfunc.load_model(logged_model)


def prepare_features(ride):
    features = {}
    features["PU_DO"] = "%s_%s" % (ride["PULocationID"], ride["DOLocationID"])  # noqa: UP031
    features["trip_distance"] = ride["trip_distance"]
    return features


def predict(features):
    pred = model.predict(features)
    return float(pred[0])


def publish_to_topic(project_id, topic_name, message_json):
    # Encode the message json
    message_encoded = json.dumps(message_json).encode("utf-8")
    # Publish the message to the topic
    future = publisher.publish(topic_path, data=message_encoded)
    # Verify that the message has arrived
    print(future.result())


@functions_framework.cloud_event
def predict_duration(cloud_event):
    decoded = base64.b64decode(cloud_event.data["message"]["data"])
    data = json.loads(decoded)
    ride = data["ride"]
    ride_id = data["ride_id"]
    features = prepare_features(ride)
    predicted_duration = round(predict(features))
    prediction = {
        "model": "ride_duration_prediction_model",
        "version": 123,
        "prediction": {"ride_duration": predicted_duration, "ride_id": ride_id},
    }

    # Publish the result to another Pub/Sub topic
    publish_to_topic(PROJECT_ID, TOPIC_NAME, prediction)

    return prediction
