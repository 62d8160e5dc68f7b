"""Typed settings, read from OLDPHOTO_* environment variables (and a .env file), overridable by CLI flags.

Only non-secret settings live here. Credentials come from the usual places of each backend
(AWS_ACCESS_KEY_ID and friends, ~/.aws, instance roles), so they never travel as flow parameters.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "OLDPHOTO_"


class Settings(BaseSettings):
    """Each setting from its flag, else its OLDPHOTO_* variable, else the ecosystem's own convention
    (MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, dask's scheduler-address, which
    DASK_SCHEDULER_ADDRESS sets), else the default."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", populate_by_name=True)

    home: Path = Field(Path(".oldphoto"), description="local state: MLflow database, caches")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. http://127.0.0.1:9000", validation_alias=AliasChoices(
        "OLDPHOTO_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"))
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="extra fsspec options for every URL (JSON in the environment)"
    )
    mlflow_tracking_uri: str | None = Field(None, description="MLflow tracking server or database; none: a SQLite file under home",
                                            validation_alias=AliasChoices("OLDPHOTO_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"))
    dask_address: str | None = Field(None, description="existing Dask scheduler; none means a local cluster")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: a CUDA GPU where there is one, else the CPU")
    torch_threads: int | None = Field(None, gt=0, description="torch threads per process; none: torch's default")

    @field_validator("s3_endpoint_url", "dask_address", "mlflow_tracking_uri", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return value or None

    @model_validator(mode="after")
    def _dask_convention(self) -> "Settings":
        if self.dask_address is None:
            import dask

            self.dask_address = dask.config.get("scheduler-address", None) or None
        return self

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    def fsspec_options(self, url: str) -> dict[str, Any]:
        """Options for fsspec for this URL: the configured ones plus the S3 endpoint."""
        options = dict(self.storage_options)
        if url.startswith(("s3://", "s3a://")) and self.s3_endpoint_url:
            client_kwargs = dict(options.get("client_kwargs", {}))
            client_kwargs.setdefault("endpoint_url", self.s3_endpoint_url)
            options["client_kwargs"] = client_kwargs
        return options

    def export_to_env(self) -> None:
        """Put these settings into os.environ so that worker processes started from here see them."""
        for name, value in self.model_dump().items():
            key = ENV_PREFIX + name.upper()
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = json.dumps(value) if isinstance(value, dict) else str(value)


@lru_cache
def get_settings() -> Settings:
    return Settings()


def configure(**overrides: Any) -> Settings:
    """Apply overrides (from CLI flags), export them for workers, and return the settings in force."""
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    settings.export_to_env()
    get_settings.cache_clear()
    return get_settings()
