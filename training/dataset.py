"""Ride datasets for training: NYC TLC trip records, or a seeded synthetic stand-in.

Both go through the same preparation as the course: the target is the ride's duration in
minutes from pickup to dropoff, and only rides of 1 to 60 minutes are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ride_predictor.messages import prepare_features

MIN_DURATION_MINUTES = 1.0
MAX_DURATION_MINUTES = 60.0
FEATURE_COLUMNS = ("PULocationID", "DOLocationID", "trip_distance")
# Yellow taxi files use tpep_*, green ones lpep_*; FHV files use these plain names.
_PICKUP_COLUMNS = ("tpep_pickup_datetime", "lpep_pickup_datetime", "pickup_datetime")
_DROPOFF_COLUMNS = ("tpep_dropoff_datetime", "lpep_dropoff_datetime", "dropOff_datetime")


def _first_present(frame: pd.DataFrame, candidates: Sequence[str], what: str) -> str:
    for column in candidates:
        if column in frame.columns:
            return column
    raise ValueError(f"no {what} column (looked for {', '.join(candidates)})")


def prepare_rides(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``duration`` in minutes, keep rides of 1 to 60 minutes with usable features."""
    pickup = pd.to_datetime(frame[_first_present(frame, _PICKUP_COLUMNS, "pickup time")])
    dropoff = pd.to_datetime(frame[_first_present(frame, _DROPOFF_COLUMNS, "dropoff time")])
    rides = frame.rename(columns={"PUlocationID": "PULocationID", "DOlocationID": "DOLocationID"})
    rides = rides.assign(duration=(dropoff - pickup).dt.total_seconds() / 60)
    rides = rides[rides["duration"].between(MIN_DURATION_MINUTES, MAX_DURATION_MINUTES)]
    rides = rides.dropna(subset=list(FEATURE_COLUMNS))
    rides = rides[(rides["PULocationID"] > 0) & (rides["DOLocationID"] > 0)]
    rides = rides[rides["trip_distance"] >= 0]
    return rides.astype({"PULocationID": "int64", "DOLocationID": "int64"}).reset_index(drop=True)


def read_trip_records(path: Path) -> pd.DataFrame:
    """Read one TLC trip-record file (parquet or CSV) and prepare it."""
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix in (".csv", ".gz"):
        frame = pd.read_csv(path)
    else:
        raise ValueError(f"{path}: expected a .parquet or .csv trip-record file")
    return prepare_rides(frame)


def generate_rides(n_rides: int = 30_000, n_zones: int = 60, seed: int = 42) -> pd.DataFrame:
    """A synthetic month of yellow-taxi trip records, shaped like the TLC files.

    Duration rises with distance, and each pickup/dropoff zone pair adds its own delay, so a
    model over ``PU_DO`` and ``trip_distance`` has something real to learn. Seeded: the same
    arguments give the same rides.
    """
    rng = np.random.default_rng(seed)
    zones = np.sort(rng.choice(np.arange(1, 266), size=n_zones, replace=False))
    zone_delay = rng.normal(0.0, 3.0, size=n_zones)
    pair_delay = rng.normal(0.0, 2.0, size=(n_zones, n_zones))
    pickup_index = rng.integers(0, n_zones, size=n_rides)
    dropoff_index = rng.integers(0, n_zones, size=n_rides)
    distance = np.round(rng.gamma(shape=2.0, scale=1.6, size=n_rides), 2)
    minutes = (
        4.0
        + 3.2 * distance
        + zone_delay[pickup_index]
        + zone_delay[dropoff_index]
        + pair_delay[pickup_index, dropoff_index]
        + rng.normal(0.0, 2.0, size=n_rides)
    )
    pickup = pd.Timestamp("2024-01-01") + pd.to_timedelta(
        rng.integers(0, 31 * 24 * 3600, size=n_rides), unit="s"
    )
    frame = pd.DataFrame(
        {
            "tpep_pickup_datetime": pickup,
            "tpep_dropoff_datetime": pickup + pd.to_timedelta(np.round(minutes * 60), unit="s"),
            "PULocationID": zones[pickup_index],
            "DOLocationID": zones[dropoff_index],
            "trip_distance": distance,
        }
    )
    return prepare_rides(frame)


def feature_dicts(rides: pd.DataFrame) -> list[dict[str, object]]:
    """The model's input rows, built by the function's own ``prepare_features``."""
    return [prepare_features(ride) for ride in rides[list(FEATURE_COLUMNS)].to_dict("records")]
