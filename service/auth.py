"""API keys: a caller is known by the sha256 of its key, checked against the
configured digests (the keys themselves are never stored)."""

from __future__ import annotations

import hashlib
import hmac

from service.problems import Problem
from service.settings import Settings

ANONYMOUS = "anonymous"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def authenticate(settings: Settings, x_api_key: str | None, authorization: str | None) -> str:
    """The caller's identity from its headers: a prefix of its key's sha256, or
    'anonymous' when auth is off. Raises Problem 401 (no key) or 403 (unknown key)."""
    if not settings.auth_enabled:
        return ANONYMOUS
    key = x_api_key
    if key is None and authorization and authorization.lower().startswith("bearer "):
        key = authorization[7:].strip()
    if not key:
        raise Problem(
            401,
            "an API key is required (X-API-Key or Authorization: Bearer)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    digest = key_hash(key)
    if not any(hmac.compare_digest(digest, known) for known in settings.key_hashes):
        raise Problem(403, "this API key is not accepted")
    return digest[:16]
