"""JwtTokenService: HS256 access tokens; algorithm pinned, exp/iat/sub required."""

from __future__ import annotations

from datetime import timedelta

import jwt

from domain.errors import Unauthorized
from domain.ports import Clock, IssuedToken

_ALGORITHM = "HS256"


class JwtTokenService:
    def __init__(self, *, secret: str, ttl_s: int, clock: Clock, issuer: str = "goldenpath") -> None:
        if len(secret.encode()) < 32:
            raise ValueError("the JWT secret must be at least 32 bytes")
        self._secret = secret
        self._ttl_s = ttl_s
        self._clock = clock
        self._issuer = issuer

    def issue(self, user_id: str) -> IssuedToken:
        now = self._clock.now()
        claims = {"sub": user_id, "iat": now, "exp": now + timedelta(seconds=self._ttl_s),
                  "iss": self._issuer}
        return IssuedToken(jwt.encode(claims, self._secret, algorithm=_ALGORITHM), self._ttl_s)

    def verify(self, token: str) -> str:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                issuer=self._issuer,
                options={"require": ["exp", "iat", "sub", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The token has expired; log in again.") from None
        except jwt.PyJWTError:
            raise Unauthorized("The token is not valid; log in again.") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthorized("The token is not valid; log in again.")
        return subject
