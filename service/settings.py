"""Control-plane settings from the environment (``FLATMTL_*``) and an optional YAML file.

Precedence: explicit arguments, then environment variables, then the file named by ``FLATMTL_CONFIG``
(or passed to :func:`load_settings`), then defaults. Paths left unset derive from ``data_dir``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)


class Settings(BaseSettings):
    """Everything the API, CLI and workers need to find the database, artifacts and Ray."""

    model_config = SettingsConfigDict(env_prefix="FLATMTL_", extra="forbid", validate_default=True)

    data_dir: Path = Field(default_factory=lambda: Path.home() / ".flatmtl", description="Root of local state.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file under data_dir.")
    artifact_dir: Path | None = Field(None, description="Per-job artifacts and logs; default: data_dir/artifacts.")
    data_roots: list[Path] | None = Field(
        None,
        description="The only directories (and what is below them) that paths in specs may name, such as "
        "problem_options.data_dir; default: data_dir/datasets and /usr/share/datasets.",
    )
    ray_address: str = Field("local", description="'local' starts a Ray on this machine; else a cluster address.")
    ray_storage: str | None = Field(
        None,
        description="Where runs persist through Ray (checkpoints, metrics, summaries, plots): a directory every "
        "Ray node sees, or an object store URI (s3://bucket/prefix, with ?endpoint_override=http://host:port for "
        "an S3-compatible server). Unset: each job's artifact directory, which suits a single machine.",
    )
    ray_auth_token_file: Path | None = Field(
        None,
        description="The token of a Ray cluster with token authentication (what `ray start` sets up): the worker "
        "joins with RAY_AUTH_MODE=token and this file. Ray's own RAY_AUTH_MODE and RAY_AUTH_TOKEN work too.",
    )
    ray_train_max_failures: int = Field(
        2, ge=0, description="Restarts of a run's Ray Train worker group (a lost rank or node), from its checkpoint."
    )
    lease_seconds: float = Field(60.0, gt=0, description="How long a claim lasts without a heartbeat.")
    max_attempts: int = Field(3, ge=1, le=100, description="Default attempts before a job whose lease expires fails.")
    code_max_bytes: int = Field(
        10 * 2**20, ge=1, description="Largest code archive a job may ship, packed and unpacked (bytes)."
    )
    code_retention_days: float = Field(
        30.0,
        gt=0,
        description="Shipped code that no unfinished job names and that was not uploaded or run for this long is "
        "deleted by the workers.",
    )
    shutdown_grace_s: float = Field(
        60.0,
        ge=0,
        description="How long a worker told to stop (SIGTERM, SIGINT) lets its job run on before stopping it at its "
        "last checkpoint and releasing it to the queue.",
    )
    token_secret: SecretStr | None = Field(None, description="HMAC key for API token hashes; default: a file.")
    reads_open: bool = Field(False, description="Serve GET endpoints without a token.")
    metrics_open: bool = Field(
        True,
        description="Serve /metrics without a token (to the Prometheus scraper); off, it needs a token, and a token "
        "without read_all sees only its own user's running jobs there.",
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Larger request bodies get 413.")
    sqlite_busy_timeout_s: float = Field(30.0, gt=0, description="How long SQLite waits for the write lock.")
    migrate_on_start: bool = Field(True, description="Run Alembic migrations when the API starts.")
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.data_dir / 'flatmtl.db'}"
        if self.artifact_dir is None:
            self.artifact_dir = self.data_dir / "artifacts"
        if self.data_roots is None:
            self.data_roots = [self.data_dir / "datasets", Path("/usr/share/datasets")]
        return self

    @property
    def db_url(self) -> str:
        assert self.database_url is not None
        return self.database_url

    @property
    def allowed_data(self) -> list[Path]:
        assert self.data_roots is not None
        return self.data_roots

    @property
    def artifacts(self) -> Path:
        assert self.artifact_dir is not None
        return self.artifact_dir

    def token_key(self) -> bytes:
        """The HMAC key for token hashes: the setting, or a random key persisted under data_dir.

        A persisted key lets `flatmtl token create` and the server agree without configuration.
        """
        if self.token_secret is not None:
            return self.token_secret.get_secret_value().encode()
        path = self.data_dir / "token_secret"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
        return path.read_text().strip().encode()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, YamlConfigSettingsSource(settings_cls)


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Settings with keyword overrides on top of the environment, on top of a YAML file.

    The file is ``config`` or else the one named by ``FLATMTL_CONFIG``; without either, only the
    environment and defaults apply.
    """
    path = config or (Path(os.environ["FLATMTL_CONFIG"]) if os.environ.get("FLATMTL_CONFIG") else None)
    if path is None:
        return Settings(**overrides)
    if not path.is_file():
        raise FileNotFoundError(f"settings file {path} does not exist")

    class FileSettings(Settings):
        model_config = SettingsConfigDict(yaml_file=path)

    return FileSettings(**overrides)
