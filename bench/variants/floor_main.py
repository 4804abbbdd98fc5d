"""Bench-only floor: decode and publish, no model (the tutorial's section 05 function).

What a Pub/Sub-in, Pub/Sub-out function costs before any model is added: the tutorial's
constant ``predict``, ``publish(...).result()`` with the client's default batch settings.
Like the baseline it reads the project and topic from the environment.
"""

import base64
import json
import os

import functions_framework
from google.cloud import pubsub_v1

publisher = pubsub_v1.PublisherClient()
PROJECT_ID = os.getenv("PROJECT_ID", "mlops-demo-408506")
TOPIC_NAME = os.getenv("PUBLISH_STREAM", "ride-predictions")
topic_path = publisher.topic_path(PROJECT_ID, TOPIC_NAME)


def prepare_features(ride):
    features = {}
    features["PU_DO"] = "%s_%s" % (ride["PULocationID"], ride["DOLocationID"])  # noqa: UP031
    features["trip_distance"] = ride["trip_distance"]
    return features


def predict(features):
    return 10.0


def publish_to_topic(project_id, topic_name, message_json):
    message_encoded = json.dumps(message_json).encode("utf-8")
    future = publisher.publish(topic_path, data=message_encoded)
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
    publish_to_topic(PROJECT_ID, TOPIC_NAME, prediction)
    return prediction
