"""The MLflow model registry: which version a ``models:/`` URI names, pinning it, labels.

A ``models:/<name>@<alias>`` URI (or ``/latest``, a stage) moves when the alias does: it is
resolved once per load, to the version it names now, and that version is loaded by its pinned
URI (``models:/<name>/<N>``), so the label of every prediction names the model that made it.
``derive_version`` picks that label by docs/design.md's order of precedence.
"""

from __future__ import annotations

import re
from collections.abc import Callable, MutableMapping

from ride_predictor.errors import ModelLoadError

# models:/<name>/<version or stage or "latest">[/sub/path] and models:/<name>@<alias>[/sub/path]
_REGISTERED_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<ref>[^/]+))")

# What MLflow's HTTP client does by default on a failed call to the tracking server: 7 retries
# with exponential backoff (factor 2, so sleeps of up to a minute each) and 120 s per request,
# minutes in all. A refresh stuck that long would also delay the one after the server comes back,
# so these bounds apply unless the deployment sets MLflow's own variables (docs/models.md).
MLFLOW_HTTP_BOUNDS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def bound_mlflow_http_requests(environ: MutableMapping[str, str]) -> None:
    """Set ``MLFLOW_HTTP_BOUNDS`` in ``environ`` (the process's environment, where MLflow reads
    them on every request) for each variable the deployment left unset."""
    for name, value in MLFLOW_HTTP_BOUNDS.items():
        environ.setdefault(name, value)


def is_movable(model_uri: str) -> bool:
    """Whether ``model_uri`` is a registry URI whose version can change under it: an alias,
    ``latest`` or a stage (``models:/<name>/<number>`` and every other URI name a fixed model)."""
    match = _REGISTERED_URI.match(model_uri)
    if match is None:
        return False
    return match["alias"] is not None or not match["ref"].isdigit()


def pinned_uri(model_uri: str, version: str) -> str:
    """``models:/<name>@<alias>[/sub]`` (or ``/latest``, a stage) as ``models:/<name>/<N>[/sub]``.

    Loading the pinned URI makes the version that labels the model the one that was downloaded:
    the alias is read once, not once by MLflow's download and again for the label.
    """
    match = _REGISTERED_URI.match(model_uri)
    if match is None:
        raise ValueError(f"{model_uri} is not a models:/ registry URI")
    return f"models:/{match['name']}/{version}{model_uri[match.end() :]}"


def registered_model_version(model_uri: str) -> str | None:
    """Resolve the registry version a ``models:/`` URI names, or None for any other URI.

    A numeric version is returned as written; an alias, ``latest`` or a stage is resolved
    through the MLflow registry at ``MLFLOW_TRACKING_URI``. MLflow 3 logged-model URIs
    (``models:/m-<id>``) are not registered versions and give None.
    """
    match = _REGISTERED_URI.match(model_uri)
    if match is None:
        return None
    name, alias, ref = match["name"], match["alias"], match["ref"]
    if ref is not None and ref.isdigit():
        return str(ref)

    from mlflow import MlflowClient

    client = MlflowClient()
    if alias is not None:
        return str(client.get_model_version_by_alias(name, alias).version)
    if ref is None:
        return None
    if ref.lower() == "latest":
        versions = client.search_model_versions(f"name='{name}'")
        return str(max(int(version.version) for version in versions)) if versions else None
    staged = client.get_latest_versions(name, stages=[ref])
    return str(staged[0].version) if staged else None


def resolve_once(
    model_uri: str, resolve: Callable[[str], str | None] = registered_model_version
) -> tuple[str, str | None]:
    """(the URI to load now, its registry version): a moving registry URI is resolved once, to
    the version it names now, and pinned to it; any other URI is returned as it is, with None."""
    if not is_movable(model_uri):
        return model_uri, None
    version = resolve(model_uri)
    if version is None:
        raise ModelLoadError(f"{model_uri} names no registered model version")
    return pinned_uri(model_uri, version), version


def derive_version(
    model_uri: str, run_id: str | None, model_uuid: str | None, override: str | None
) -> str:
    """Pick the output's ``version`` by ``docs/design.md``'s order of precedence."""
    for candidate in (override, registered_model_version(model_uri), run_id, model_uuid):
        if candidate:
            return str(candidate)
    raise ModelLoadError(f"{model_uri} has no registry version, run_id or model_uuid")
