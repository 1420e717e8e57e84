"""Settings: pydantic-settings, env prefix GOLDENPATH_, nested delimiter __, optional .env."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from domain.mcp import server_name_problem

# Printed in earlier releases' code and docs, so a token signed with one proves nothing: refused in
# every environment. Without a secret of its own, a server generates one (container/signing_key.py).
PUBLISHED_JWT_SECRETS = frozenset({"goldenpath-development-secret-do-not-use-in-production"})


class ServerSettings(BaseModel):
    processes: int = Field(1, ge=1, description="server processes sharing this database")
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    instance_id: str | None = Field(None, max_length=200, description="the name this process owns "
                                    "runs under; default HOSTNAME:PORT, so a restarted process "
                                    "takes back its runs at once. Unique per process")
    shutdown_grace_s: float = Field(10.0, ge=0)
    ws_auth_timeout_s: float = Field(5.0, gt=0)
    ws_heartbeat_s: float = Field(20.0, gt=0)
    ws_max_frame_bytes: int = Field(64 * 1024, ge=1024)
    ws_send_queue: int = Field(1024, ge=16)
    ws_send_queue_bytes: int = Field(1024 * 1024, ge=64 * 1024, description="bytes of frames that "
                                     "may wait for one socket; more and it is closed with 4408")
    ws_receive_queue_bytes: int = Field(16 * 1024, ge=1024, description="frames one socket may have "
                                        "read and parsed but not yet handled, each counted as its "
                                        "size + 128; past it the socket is not read until they are")
    ws_send_stall_s: float = Field(5.0, gt=0, description="a socket whose client has taken no frame "
                                   "for this long while frames wait is closed with 4408; its close "
                                   "frame gets as long again, then the connection is cut")
    ws_kernel_send_buffer_bytes: int = Field(128 * 1024, ge=16 * 1024, description="the socket's "
                                             "kernel send buffer (SO_SNDBUF): small, so a client "
                                             "that reads nothing is found out in seconds")
    sse_keepalive_s: float = Field(15.0, gt=0, description="an idle SSE or AG-UI stream sends a "
                                   "comment this often, and checks whether its run ended meanwhile")
    max_body_bytes: int = Field(256 * 1024, ge=1024)


class DatabaseSettings(BaseModel):
    url: str = "sqlite:///var/goldenpath.db"
    migrate_on_start: bool = True
    pool_size: int = Field(20, ge=1, description="PostgreSQL connections per process; "
                           "past it, queries wait for one")
    echo: bool = False


class AuthSettings(BaseModel):
    jwt_secret: SecretStr | None = Field(None, description="unset: a random one, generated on the "
                                         "first start and kept beside the database")
    token_ttl_s: int = Field(3600, ge=60)
    argon2_time_cost: int = Field(3, ge=1)
    argon2_memory_kib: int = Field(65536, ge=1024)
    argon2_parallelism: int = Field(4, ge=1)
    min_password_length: int = Field(8, ge=8)

    @field_validator("jwt_secret")
    @classmethod
    def _not_published(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is not None and secret.get_secret_value() in PUBLISHED_JWT_SECRETS:
            raise ValueError("this secret was published with goldenpath; unset it (a random one is "
                             "then generated) or set a random secret of your own")
        return secret


class ModelSettings(BaseModel):
    provider: Literal["builtin", "openai"] = "builtin"
    builtin_delay_ms: float = Field(15.0, ge=0, description="pause between streamed pieces")
    timeout_s: float = Field(60.0, gt=0, description="longest wait for the model's next piece")
    base_url: str = "https://api.openai.com/v1"
    api_key: SecretStr = SecretStr("")
    name: str = "gpt-4o-mini"
    max_retries: int = Field(3, ge=0, le=10)


class BusSettings(BaseModel):
    backend: Literal["memory", "redis"] = "memory"
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    channel: str = "goldenpath:events"


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
                               "this long is taken over by another process (or its restart)")
    max_takeovers: int = Field(2, ge=0, description="times a run may be taken over and go on from its "
                               "checkpoint; once more and it ends agent_error interrupted")
    event_retention_days: float = Field(7.0, gt=0)
    delta_window_ms: float = Field(30.0, ge=0, le=1000, description="message deltas that arrive "
                                   "within this many ms of the first one not yet sent are stored "
                                   "and sent as one agent_message_delta; 0 sends each as it comes")

    @property
    def delta_window_s(self) -> float:
        return self.delta_window_ms / 1000


class ToolsSettings(BaseModel):
    pause_ms: float = Field(0.0, ge=0, le=60_000, description="a pause before each tool call runs: "
                            "for demos and fault drills (a process killed while a tool runs)")

    @property
    def pause_s(self) -> float:
        return self.pause_ms / 1000


class ApprovalsSettings(BaseModel):
    timeout_s: float = Field(3600.0, gt=0, description="how long a run waits for a person to approve "
                             "a tool call; past it the run ends agent_cancelled, reason approval_timeout")
    tools: dict[str, Literal["auto", "ask"]] = Field(
        default_factory=dict, description="approval policy per tool name, over each tool's own "
        '(delete_notes asks; the rest run): e.g. {"calculator": "ask", "delete_notes": "auto"}')


class McpServerSettings(BaseModel):
    """An operator's MCP server, offered to every user."""

    model_config = ConfigDict(extra="forbid")

    name: str

    @field_validator("name")
    @classmethod
    def _a_server_name(cls, name: str) -> str:
        if (problem := server_name_problem(name)) is not None:
            raise ValueError(problem)
        return name

    url: str | None = Field(None, description="Streamable HTTP endpoint")
    command: str | list[str] | None = Field(None, description="a stdio server: the command to start "
                                            "(a string is split as a shell would)")
    env: dict[str, str] = Field(default_factory=dict, description="stdio: the command's environment")
    headers: dict[str, str] = Field(default_factory=dict, description="sent with each request; "
                                    "{user_id} in a value becomes the calling user's id")
    approval: Literal["auto", "ask"] = "auto"
    tools: list[str] | None = Field(None, description="the server's tools offered (None: all)")

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerSettings:
        if (self.url is None) == (self.command is None):
            raise ValueError(f"MCP server {self.name!r}: give exactly one of 'url' and 'command'")
        return self


class McpSettings(BaseModel):
    servers: list[McpServerSettings] = Field(default_factory=list, description="operator MCP servers "
                                             'offered to every user, JSON: [{"name", "url" | "command", '
                                             '"headers"?, "approval"?, "tools"?}]')
    secret_key: SecretStr | None = Field(None, description="encrypts users' MCP server headers at rest; "
                                         "development generates one beside the database")
    allow_private_networks: bool = Field(False, description="let users' MCP server URLs reach loopback, "
                                         "private and link-local addresses")
    timeout_s: float = Field(20.0, gt=0, description="per MCP request (a tool list or a call); under "
                             "limits.tool_timeout_s, so an MCP call that hangs says so as MCP's")
    max_calls_per_run: int = Field(20, ge=1, description="MCP tool calls one run may make")
    max_result_chars: int = Field(20_000, ge=100, description="an MCP tool result past this is cut, "
                                  "with a note saying so")
    list_ttl_s: float = Field(60.0, ge=0, description="how long a server's tool list is cached, per "
                              "user and server")
    max_servers_per_user: int = Field(10, ge=0)

    @model_validator(mode="after")
    def _names_unique(self) -> McpSettings:
        names = [server.name for server in self.servers]
        if len(names) != len(set(names)):
            raise ValueError("MCP server names must be unique")
        return self


class SecuritySettings(BaseModel):
    allowed_origins: list[str] = Field(default_factory=list, description="extra browser origins "
                                       "allowed to open /ws besides the server's own")
    trusted_proxies: list[str] = Field(default_factory=list, description="addresses or CIDRs whose "
                                       "X-Forwarded-For is believed")
    max_sockets_per_user: int = Field(8, ge=1)
    messages_per_minute: int = Field(30, ge=1)
    ws_frames_per_s: float = Field(50.0, gt=0, description="frames one socket may send per second "
                                   "after its burst; faster ones are read later, not dropped")
    ws_frame_burst: int = Field(100, ge=1)
    ws_user_bytes_per_s: int = Field(64 * 1024, ge=1024, description="bytes of frames one user's "
                                     "sockets together may send per second after the burst, a "
                                     "frame counted as 1 KiB at least; more are read later")
    ws_user_bytes_burst: int = Field(1024 * 1024, ge=64 * 1024)
    ws_replay_events_per_s: float = Field(100.0, gt=0, description="events one user's resumes may "
                                          "replay per second after the burst; a user past it has "
                                          "its next frames read later")
    ws_replay_burst: int = Field(2000, ge=1)


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
    tools: ToolsSettings = ToolsSettings()
    approvals: ApprovalsSettings = ApprovalsSettings()
    mcp: McpSettings = McpSettings()
    bus: BusSettings = BusSettings()
    security: SecuritySettings = SecuritySettings()
    log: LogSettings = LogSettings()

    @model_validator(mode="after")
    def _production_is_safe(self) -> Settings:
        if self.env == "production":
            problems = unsafe_for_production(self)
            if problems:
                raise ValueError("refusing to start in production:\n- " + "\n- ".join(problems))
        return self


def unsafe_for_production(settings: Settings) -> list[str]:
    """What a production deployment must change, each as an instruction."""
    problems = []
    secret = settings.auth.jwt_secret
    # A generated secret lives on one host: processes elsewhere would refuse each other's tokens.
    if secret is None or len(secret.get_secret_value().encode()) < 32:
        problems.append("set GOLDENPATH_AUTH__JWT_SECRET to a random secret of 32 bytes or more "
                        "(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')")
    if settings.database.url.startswith("sqlite"):
        problems.append("set GOLDENPATH_DATABASE__URL to PostgreSQL "
                        "(postgresql+asyncpg://user:password@host:5432/db); SQLite is for one laptop")
    if settings.bus.backend == "memory" and settings.server.processes > 1:
        problems.append(f"GOLDENPATH_SERVER__PROCESSES is {settings.server.processes}: set "
                        "GOLDENPATH_BUS__BACKEND=redis and GOLDENPATH_BUS__REDIS_URL so events reach "
                        "every process")
    key = settings.mcp.secret_key
    if key is None or len(key.get_secret_value().encode()) < 32:
        problems.append("set GOLDENPATH_MCP__SECRET_KEY to a random secret of 32 bytes or more: it "
                        "encrypts the credentials of users' MCP servers")
    if settings.model.provider == "openai" and not settings.model.api_key.get_secret_value() and \
            "api.openai.com" in settings.model.base_url:
        problems.append("set GOLDENPATH_MODEL__API_KEY for the OpenAI API")
    return problems
