"""Users and their API tokens, and the rule "a user touches only what is theirs".

Tokens are 32 random bytes (URL-safe); only their SHA-256 is stored. A fast hash is right here:
the token carries 256 bits of entropy, so there is nothing for a slow hash to protect.
"""

from __future__ import annotations

import hashlib
import secrets

from kernelagent.domain import Session, User
from kernelagent.errors import Conflict, NotFound
from kernelagent.services.ports import Database


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AuthService:
    """Creates users, resolves tokens, and checks ownership."""

    def __init__(self, db: Database):
        self.db = db

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
        return await self.db.users.by_token_hash(token_hash(token))

    @staticmethod
    def check_owner(user: User, session: Session | None) -> Session:
        """The session if ``user`` owns it; NotFound otherwise (others' sessions do not exist)."""
        if session is None or session.user_id != user.id:
            raise NotFound("no such session")
        return session
