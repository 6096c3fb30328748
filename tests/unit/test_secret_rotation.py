"""After a webhook secret rotation the old secret is accepted only until the overlap ends:
`Deployment.signature_matches` at instants around `previous_secret_until`, with the clock
passed in (no wall time involved)."""

from __future__ import annotations

import pytest

from meterstream.core.registry import Deployment
from meterstream.core.signature import sign

OLD = "old-secret-0123456789abcdef0123"
NEW = "new-secret-fedcba9876543210fedc"
BODY = b'[{"topic":"verification","message":"Convex connection test","timestamp":1}]'
ROTATED_AT = 1_795_000_000_000
OVERLAP_MS = 600_000  # METERSTREAM_SECRET_OVERLAP's default, 600 s
UNTIL = ROTATED_AT + OVERLAP_MS


def rotated() -> Deployment:
    """The record as ingest/provisioning.py writes it after a rotation at ROTATED_AT."""
    return Deployment(name="happy-otter-123", webhook_secret=NEW, previous_webhook_secret=OLD,
                      previous_secret_until=UNTIL)


@pytest.mark.parametrize("now_ms", [ROTATED_AT, UNTIL - 1])
def test_the_old_secret_is_accepted_inside_the_overlap(now_ms: int) -> None:
    assert rotated().signature_matches(BODY, sign(BODY, OLD), now_ms)


@pytest.mark.parametrize("now_ms", [UNTIL, UNTIL + 1, UNTIL + 86_400_000])
def test_the_old_secret_is_refused_once_the_overlap_ended(now_ms: int) -> None:
    assert not rotated().signature_matches(BODY, sign(BODY, OLD), now_ms)


@pytest.mark.parametrize("now_ms", [ROTATED_AT, UNTIL - 1, UNTIL, UNTIL + 86_400_000])
def test_the_new_secret_is_accepted_before_during_and_after_the_overlap(now_ms: int) -> None:
    assert rotated().signature_matches(BODY, sign(BODY, NEW), now_ms)


def test_the_old_secret_signs_only_its_own_body() -> None:
    # Inside the overlap the old secret still authenticates only the exact bytes it signed.
    assert not rotated().signature_matches(BODY + b" ", sign(BODY, OLD), ROTATED_AT)


def test_without_a_rotation_there_is_no_previous_secret_to_accept() -> None:
    record = Deployment(name="happy-otter-123", webhook_secret=NEW)
    assert not record.signature_matches(BODY, sign(BODY, OLD), ROTATED_AT)
    # A leftover overlap end without a previous secret accepts nothing extra either.
    leftover = Deployment(name="happy-otter-123", webhook_secret=NEW,
                          previous_secret_until=UNTIL)
    assert not leftover.signature_matches(BODY, sign(BODY, OLD), ROTATED_AT)


def test_a_second_rotation_drops_the_first_secret_at_once() -> None:
    """Rotating again inside the overlap keeps only the secret just replaced: the one
    before it is refused even though the first overlap has not ended."""
    first = rotated()
    second = Deployment(name=first.name, webhook_secret="third-secret-0123456789abcdef01",
                        previous_webhook_secret=first.webhook_secret,
                        previous_secret_until=ROTATED_AT + 60_000 + OVERLAP_MS)
    now = ROTATED_AT + 60_000
    assert second.signature_matches(BODY, sign(BODY, NEW), now)
    assert not second.signature_matches(BODY, sign(BODY, OLD), now)
