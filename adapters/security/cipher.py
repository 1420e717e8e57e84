"""Secrets at rest: users' MCP server headers, encrypted with a key from the settings (Fernet:
AES-128-CBC with HMAC-SHA256, so a stored value can be neither read nor altered without it)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping

from cryptography.fernet import Fernet, InvalidToken


class UnreadableSecret(Exception):
    """A stored secret the key cannot open (another key, or altered)."""


class SecretBox:
    def __init__(self, secret: str) -> None:
        # Fernet wants 32 url-safe base64 bytes; the setting is any string of 32 bytes or more.
        self._fernet = Fernet(base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest()))

    def seal(self, values: Mapping[str, str]) -> str:
        return self._fernet.encrypt(json.dumps(dict(values), separators=(",", ":")).encode()).decode()

    def open(self, sealed: str) -> dict[str, str]:
        try:
            return dict(json.loads(self._fernet.decrypt(sealed.encode())))
        except (InvalidToken, ValueError) as exc:
            raise UnreadableSecret("a stored secret cannot be opened with this key") from exc
