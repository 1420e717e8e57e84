"""Settings: pydantic-settings, env prefix GOLDENPATH_, nested delimiter __, optional .env."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# Known to everyone, so production refuses it (a token signed with it proves nothing).
DEV_JWT_SECRET = "goldenpath-development-secret-do-not-use-in-production"  # noqa: S105


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    shutdown_grace_s: float = Field(10.0, ge=0)
    ws_auth_timeout_s: float = Field(5.0, gt=0)
    ws_heartbeat_s: float = Field(20.0, gt=0)
    ws_max_frame_bytes: int = Field(64 * 1024, ge=1024)
    ws_send_queue: int = Field(1024, ge=16)
    max_body_bytes: int = Field(256 * 1024, ge=1024)


class DatabaseSettings(BaseModel):
    url: str = "sqlite+aiosqlite:///var/goldenpath.db"
    migrate_on_start: bool = True
    echo: bool = False


class AuthSettings(BaseModel):
    jwt_secret: SecretStr = SecretStr(DEV_JWT_SECRET)
    token_ttl_s: int = Field(3600, ge=60)
    argon2_time_cost: int = Field(3, ge=1)
    argon2_memory_kib: int = Field(65536, ge=1024)
    argon2_parallelism: int = Field(4, ge=1)
    min_password_length: int = Field(8, ge=8)


class ModelSettings(BaseModel):
    provider: Literal["builtin"] = "builtin"
    builtin_delay_ms: float = Field(15.0, ge=0, description="pause between streamed pieces")
    timeout_s: float = Field(60.0, gt=0, description="longest wait for the model's next piece")


class LimitsSettings(BaseModel):
    max_engines_per_user: int = Field(4, ge=1)
    max_engines_total: int = Field(2000, ge=1)
    max_pending_runs_per_user: int = Field(16, ge=1)
    run_timeout_s: float = Field(300.0, gt=0)
    max_steps: int = Field(8, ge=1)
    max_message_chars: int = Field(8000, ge=1)
    tool_timeout_s: float = Field(30.0, gt=0)


class RunsSettings(BaseModel):
    lease_ttl_s: float = Field(30.0, ge=1, description="a run whose process stops renewing it for "
                               "this long ends as interrupted")
    event_retention_days: float = Field(7.0, gt=0)


class LogSettings(BaseModel):
    level: str = "INFO"
    json_lines: bool | None = Field(None, description="default: JSON in production only")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GOLDENPATH_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    env: Literal["development", "test", "production"] = "development"
    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    auth: AuthSettings = AuthSettings()
    model: ModelSettings = ModelSettings()
    limits: LimitsSettings = LimitsSettings()
    runs: RunsSettings = RunsSettings()
    log: LogSettings = LogSettings()
