"""Registration and login: the use cases behind /api/auth."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from domain.entities import AuditAction, AuditEntry, User
from domain.errors import Unauthorized, ValidationFailed
from domain.ports import (
    AuditLog,
    Clock,
    IdGenerator,
    IssuedToken,
    PasswordHasher,
    TokenService,
    UserRepository,
)

# The one rule for usernames; the HTTP schema of registration shows the same pattern.
USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{2,31}$"
_USERNAME = re.compile(USERNAME_PATTERN)
_BAD_CREDENTIALS = "Wrong username or password."


@dataclass(frozen=True, slots=True)
class AuthSession:
    user: User
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class PasswordPolicy:
    min_length: int  # from the settings (auth.min_password_length)
    max_length: int = 256  # not a setting: argon2 hashes any length, this only bounds the work


class AuthService:
    """Registers users, checks passwords and issues tokens; the same answer whether a user exists or not."""

    def __init__(
        self,
        *,
        users: UserRepository,
        hasher: PasswordHasher,
        tokens: TokenService,
        ids: IdGenerator,
        clock: Clock,
        audit: AuditLog,
        policy: PasswordPolicy,
    ) -> None:
        self._users = users
        self._hasher = hasher
        self._tokens = tokens
        self._ids = ids
        self._clock = clock
        self._audit = audit
        self._policy = policy
        self._dummy_hash: str | None = None

    def _check_new_credentials(self, username: object, password: object) -> tuple[str, str]:
        if not isinstance(username, str) or not _USERNAME.match(username):
            raise ValidationFailed(
                "A username is 3 to 32 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit."
            )
        if not isinstance(password, str):
            raise ValidationFailed("The password must be a string.")
        if len(password) < self._policy.min_length:
            raise ValidationFailed(f"Choose a password of at least {self._policy.min_length} characters.")
        if len(password) > self._policy.max_length:
            raise ValidationFailed(f"A password is at most {self._policy.max_length} characters.")
        if len(set(password)) < 3 or password.lower() == username.lower():
            raise ValidationFailed("That password is too easy to guess; choose another.")
        return username, password

    async def register(self, username: object, password: object) -> User:
        name, secret = self._check_new_credentials(username, password)
        user = User(
            id=self._ids.new_id("usr"),
            username=name,
            password_hash=await self._hasher.hash(secret),
            created_at=self._clock.now(),
        )
        await self._users.add(user)  # raises Conflict if the name is taken
        self._audit.record(
            AuditEntry(user_id=user.id, action=AuditAction.USER_REGISTERED, at=user.created_at)
        )
        return user

    async def login(self, username: object, password: object) -> IssuedToken:
        if not isinstance(username, str) or not isinstance(password, str) or not password:
            raise Unauthorized(_BAD_CREDENTIALS)
        if len(password) > self._policy.max_length:
            raise Unauthorized(_BAD_CREDENTIALS)
        user = await self._users.get_by_username(username) if _USERNAME.match(username) else None
        if user is None:
            # Hash anyway so a missing user takes as long as a wrong password.
            if self._dummy_hash is None:
                self._dummy_hash = await self._hasher.hash("goldenpath-timing-equaliser")
            await self._hasher.verify(self._dummy_hash, password)
            raise Unauthorized(_BAD_CREDENTIALS)
        if not await self._hasher.verify(user.password_hash, password):
            raise Unauthorized(_BAD_CREDENTIALS)
        return self._tokens.issue(user.id, user.token_version)

    async def authenticate(self, token: object) -> User:
        """The user a bearer token belongs to; Unauthorized for a bad, expired or revoked token."""
        return (await self.session(token)).user

    async def session(self, token: object) -> AuthSession:
        if not isinstance(token, str) or not token:
            raise Unauthorized("A bearer token is required.")
        claims = self._tokens.verify(token)
        user = await self._users.get(claims.user_id)
        if user is None:
            raise Unauthorized("The token's user no longer exists.")
        if claims.version != user.token_version:
            raise Unauthorized("The token was revoked (logout or password change); log in again.")
        return AuthSession(user=user, expires_at=claims.expires_at)

    async def logout(self, user: User) -> None:
        """Revokes every token of the user, on every device."""
        await self._users.bump_token_version(user.id)

    async def change_password(self, user: User, current: object, new: object) -> IssuedToken:
        """Checks the current password, stores the new one, revokes earlier tokens, issues a fresh one."""
        if not isinstance(current, str) or not await self._hasher.verify(user.password_hash, current):
            raise Unauthorized(_BAD_CREDENTIALS)
        _, secret = self._check_new_credentials(user.username, new)
        version = await self._users.set_password(user.id, await self._hasher.hash(secret))
        return self._tokens.issue(user.id, version)
