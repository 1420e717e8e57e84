"""The key that signs access tokens: the configured one, or one generated once and kept on disk."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from loguru import logger
from sqlalchemy.engine import make_url

from container.settings import Settings

KEY_FILE = "jwt-secret"
MCP_KEY_FILE = "mcp-secret"
MIN_BYTES = 32


class UnusableSecretFile(RuntimeError):
    pass


def jwt_secret(settings: Settings) -> str:
    """`auth.jwt_secret`, else the generated secret kept beside the database (production has no
    else: its settings refuse to load without one)."""
    if settings.auth.jwt_secret is not None:
        return settings.auth.jwt_secret.get_secret_value()
    return read_or_create(secret_path(settings.database.url))


def secret_path(database_url: str) -> Path:
    """Beside the SQLite file, which a development server already keeps; for PostgreSQL (or SQLite
    in memory) in `var/` under the working directory, where that file would be by default."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return Path(url.database).parent / KEY_FILE
    return Path("var") / KEY_FILE


def mcp_secret(settings: Settings) -> str:
    """`mcp.secret_key` (it encrypts users' MCP server credentials), else one generated once and kept
    beside the JWT key (production has no else)."""
    if settings.mcp.secret_key is not None:
        return settings.mcp.secret_key.get_secret_value()
    return read_or_create(secret_path(settings.database.url).with_name(MCP_KEY_FILE),
                          what="MCP credentials key", setting="GOLDENPATH_MCP__SECRET_KEY")


def read_or_create(path: Path, *, what: str = "JWT signing key",
                   setting: str = "GOLDENPATH_AUTH__JWT_SECRET") -> str:
    """The secret in `path`, generated first if there is none. The new secret is written whole to a
    private draft (0600) and linked into place, which fails if the file exists: of processes that
    start together one secret wins, and none reads a half-written file."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_urlsafe(48) + "\n")
                file.flush()
                os.fsync(file.fileno())
            os.link(draft, path)
            logger.info("generated the {} in {} (mode 0600); keep it: what it protects outlives "
                        "restarts while it stays", what, path)
        except FileExistsError:
            pass  # another process linked its own first; everyone uses that one
        finally:
            draft.unlink(missing_ok=True)
    secret = path.read_text().strip()
    if len(secret.encode()) < MIN_BYTES:
        raise UnusableSecretFile(f"{path} holds no usable {what} (under {MIN_BYTES} bytes): "
                                 f"delete it to have a new one generated, or set {setting}")
    return secret
