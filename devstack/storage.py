"""Buckets and uploads on the GCS emulator."""

from __future__ import annotations

from pathlib import Path

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage


def storage_client(emulator_url: str, project_id: str = "local-project") -> storage.Client:
    """A client for the emulator at ``emulator_url`` (no credentials, no environment needed)."""
    return storage.Client(
        project=project_id,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": emulator_url},
    )


def upload_directory(client: storage.Client, local_dir: Path, gs_uri: str) -> str:
    """Upload every file under ``local_dir`` to ``gs://bucket/prefix``, creating the bucket."""
    bucket_name, _, prefix = gs_uri.removeprefix("gs://").partition("/")
    bucket = client.bucket(bucket_name)
    if not bucket.exists():
        bucket = client.create_bucket(bucket_name)
    for path in sorted(local_dir.rglob("*")):
        if path.is_file():
            relative = path.relative_to(local_dir).as_posix()
            bucket.blob(f"{prefix.rstrip('/')}/{relative}").upload_from_filename(str(path))
    return gs_uri


def delete_prefix(client: storage.Client, gs_uri: str) -> None:
    """Delete every object under ``gs://bucket/prefix``."""
    bucket_name, _, prefix = gs_uri.removeprefix("gs://").partition("/")
    for blob in client.list_blobs(bucket_name, prefix=prefix):
        blob.delete()
