"""Config of the storage layer (`hazard/infra/storage.py`): S3 connection settings, shared
by the data, training and scoring job configs."""

from __future__ import annotations

from pydantic import Field

from hazard.core.strict import StrictModel


class StorageConfig(StrictModel):
    """S3 connection settings; each unset field falls back to the standard AWS variable."""

    endpoint_url: str | None = Field(
        None,
        description="S3 endpoint, e.g. http://minio:9000 (its scheme sets http/https). "
        "Default: $AWS_ENDPOINT_URL_S3, else $AWS_ENDPOINT_URL, else AWS itself.",
    )
    region: str | None = Field(
        None, description="Region. Default: $AWS_REGION, else $AWS_DEFAULT_REGION, else the SDK's."
    )
    allow_http: bool = Field(
        True, description="Accept an http:// endpoint (false: refuse it, credentials in clear)."
    )
    ca_bundle: str | None = Field(
        None, description="PEM file of CAs to verify TLS with. Default: $AWS_CA_BUNDLE."
    )
    anonymous: bool = Field(False, description="Send unsigned requests (public buckets).")
    access_key_id_env: str = Field(
        "AWS_ACCESS_KEY_ID", description="Name of the env var holding the access key id."
    )
    secret_access_key_env: str = Field(
        "AWS_SECRET_ACCESS_KEY", description="Name of the env var holding the secret key."
    )
    session_token_env: str = Field(
        "AWS_SESSION_TOKEN", description="Name of the env var holding the session token, if any."
    )
