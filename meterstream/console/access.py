"""Who may use the console, and how a browser proves it.

Two roles: `admin` (METERSTREAM_ADMIN_TOKEN: everything, including setting an
invoice's status) and `read` (METERSTREAM_READ_TOKEN: every page, no change). With
neither token set the console is off: every page answers 403, rather than being open.

A browser logs in once with the token; it is kept in an HttpOnly, SameSite=Strict
cookie (no script can read it, no other site's page sends it). A script sends it as
`Authorization: Bearer`. A change (POST) also needs the CSRF field of the form it came
from: an HMAC of the token, which a page of another origin cannot compute, so a
browser that still sends the cookie along (an old one ignoring SameSite) changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

COOKIE = "meterstream_console"
CSRF_FIELD = "csrf"


@dataclass(frozen=True)
class Tokens:
    admin: str
    read: str

    @property
    def enabled(self) -> bool:
        return bool(self.admin or self.read)

    def role(self, token: str | None) -> str | None:
        """'admin', 'read' or None for `token`, compared in constant time."""
        if not token:
            return None
        given = token.encode()
        if self.admin and hmac.compare_digest(given, self.admin.encode()):
            return "admin"
        if self.read and hmac.compare_digest(given, self.read.encode()):
            return "read"
        return None


def bearer(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def csrf_token(token: str) -> str:
    """The form field a change must carry: bound to the login's token, so it is useless
    to anyone who does not hold the token already."""
    return hmac.new(token.encode(), b"meterstream console csrf", hashlib.sha256).hexdigest()


def csrf_matches(token: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(csrf_token(token).encode(),
                                                     given.encode())
