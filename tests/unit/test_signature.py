from __future__ import annotations

from meterstream.core.signature import sign, verify
from tests.support import convex_examples


def test_the_reference_test_vector() -> None:
    vector = convex_examples()["signature_test_vector"]
    body = vector["body"].encode()
    assert len(body) == 265
    assert sign(body, vector["secret"]) == vector["header"]
    assert verify(body, vector["header"], vector["secret"])


def test_anything_else_fails() -> None:
    vector = convex_examples()["signature_test_vector"]
    body, header, secret = vector["body"].encode(), vector["header"], vector["secret"]
    assert not verify(body + b" ", header, secret)
    assert not verify(body, header, secret[:-1] + "b")
    assert not verify(body, header.removeprefix("sha256="), secret)
    assert not verify(body, "sha1=" + header.removeprefix("sha256="), secret)
    assert not verify(body, header[:-1], secret)
    assert not verify(body, "sha256=é" + header[8:], secret)
    # The key is the secret's ASCII bytes, not the bytes its hex spells.
    assert not verify(body, sign(body, bytes.fromhex(secret).decode("latin-1")), secret)


def test_upper_case_hex_is_the_same_signature() -> None:
    vector = convex_examples()["signature_test_vector"]
    upper = "sha256=" + vector["header"].removeprefix("sha256=").upper()
    assert verify(vector["body"].encode(), upper, vector["secret"])
