"""Users and their API tokens, and the rule "a user touches only what is theirs".

Tokens are 32 random bytes (URL-safe); only their SHA-256 is stored. A fast hash is right here:
the token carries 256 bits of entropy, so there is nothing for a slow hash to protect.
"""

from __future__ import annotations

import hashlib
import secrets
import time

from kernelagent.domain import Session, User
from kernelagent.errors import Conflict, NotFound
from kernelagent.services.ports import Database


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AuthService:
    """Creates users, resolves tokens, and checks ownership."""

    CACHE_SECONDS = 30.0  # a token lookup per request costs a database round trip

    def __init__(self, db: Database):
        self.db = db
        self._cache: dict[str, tuple[User, float]] = {}

    async def add_user(self, name: str, token: str | None = None) -> tuple[User, str]:
        """A new user and their token (the only time it is visible)."""
        name = name.strip()
        if not name or len(name) > 100:
            raise ValueError("a user name is 1 to 100 characters")
        token = token or new_token()
        if await self.db.users.by_token_hash(token_hash(token)):
            raise Conflict("that token is already in use")
        return await self.db.users.add(name, token_hash(token)), token

    async def authenticate(self, token: str) -> User | None:
        if not token:
            return None
        # looked up by hash: the database never compares (or holds) the secret itself
        digest = token_hash(token)
        cached = self._cache.get(digest)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        user = await self.db.users.by_token_hash(digest)
        if user is not None:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (user, time.monotonic() + self.CACHE_SECONDS)
        return user

    @staticmethod
    def check_owner(user: User, session: Session | None) -> Session:
        """The session if ``user`` owns it; NotFound otherwise (others' sessions do not exist)."""
        if session is None or session.user_id != user.id:
            raise NotFound("no such session")
        return session
