"""JwtTokenService: HS256 access tokens; algorithm pinned, exp/iat/sub required."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt

from domain.errors import Unauthorized
from domain.ports import Clock, IssuedToken, TokenClaims

_ALGORITHM = "HS256"


class JwtTokenService:
    def __init__(self, *, secret: str, ttl_s: int, clock: Clock, issuer: str = "goldenpath") -> None:
        if len(secret.encode()) < 32:
            raise ValueError("the JWT secret must be at least 32 bytes")
        self._secret = secret
        self._ttl_s = ttl_s
        self._clock = clock
        self._issuer = issuer

    def issue(self, user_id: str, version: int) -> IssuedToken:
        now = self._clock.now()
        claims = {"sub": user_id, "ver": version, "iat": now,
                  "exp": now + timedelta(seconds=self._ttl_s), "iss": self._issuer}
        return IssuedToken(jwt.encode(claims, self._secret, algorithm=_ALGORITHM), self._ttl_s)

    def verify(self, token: str) -> TokenClaims:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                issuer=self._issuer,
                options={"require": ["exp", "iat", "sub", "iss", "ver"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The token has expired; log in again.") from None
        except jwt.PyJWTError:
            raise Unauthorized("The token is not valid; log in again.") from None
        subject, version = claims.get("sub"), claims.get("ver")
        if not isinstance(subject, str) or not subject or type(version) is not int:
            raise Unauthorized("The token is not valid; log in again.")
        return TokenClaims(user_id=subject, version=version,
                           expires_at=datetime.fromtimestamp(claims["exp"], UTC))
