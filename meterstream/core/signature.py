"""Convex's webhook signature: `x-webhook-signature: sha256=<hex>`.

HMAC-SHA256 over the exact body bytes, keyed by the secret's ASCII bytes (not
hex-decoded). Compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "x-webhook-signature"
PREFIX = "sha256="


def sign(body: bytes, secret: str) -> str:
    """The header value Convex would send for `body`."""
    return PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, header: str, secret: str) -> bool:
    candidate = header[len(PREFIX):].strip().lower()
    if not header.startswith(PREFIX) or not candidate.isascii():
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(candidate, expected)
