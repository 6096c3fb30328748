"""The receiver and the worker read every body the same way.

The receiver (`check_batch`) reads a body with a typed partial decode (msgspec), the
worker (`split_body`) with its own reading. Whatever a body holds, the receiver may
accept it for deployment D only if the worker then routes nothing to another
deployment, and counts as many events as the worker routes and dead-letters: a body
signed with one deployment's secret can never bill another, and the count the receiver
answers is the count the worker sees.

Each body is also checked on the reference reading (`parse_events`, orjson): the typed
decode must give exactly its result, or refuse exactly as it does.
"""

from __future__ import annotations

from unittest import mock

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterstream.core import log_stream
from meterstream.core.log_stream import BatchError, BatchInfo, check_batch
from processors.split import split_body
from tests.support import convex_examples

D = "d"
MAX_EVENTS = 1000
BOM = b"\xef\xbb\xbf"


def outcome(body: bytes, typed: bool) -> tuple[object, ...]:
    """check_batch's answer, by the typed decode or (typed=False) by parse_events only."""
    try:
        if typed:
            info: BatchInfo = check_batch(body, D, MAX_EVENTS)
        else:
            with mock.patch.object(log_stream, "_typed_events", return_value=None):
                info = check_batch(body, D, MAX_EVENTS)
    except BatchError as error:
        return ("refused", error.message, error.where, error.reason, error.status)
    return ("accepted", info.events, info.topics)


def assert_same_reading(body: bytes) -> tuple[object, ...]:
    answer = outcome(body, typed=True)
    assert answer == outcome(body, typed=False), body
    if answer[0] == "accepted":
        split = split_body(body, 0, 0)
        routed = [record for records in split.routed.values() for record in records]
        # "": an `other` event (console, ...) naming no deployment is kept whole under
        # no deployment (records.other), a name the registry never gives (registry.NAME).
        assert {record["deployment"] for record in routed} <= {D, ""}, body
        assert answer[1] == len(routed) + len(split.dead_letters), body
    return answer


def event(**fields: object) -> bytes:
    base = dict(convex_examples()["events"][0])
    base.update(fields)
    return orjson.dumps(base)


def raw_event(*pairs: str) -> bytes:
    """An event holding exactly these raw `"key": value` pairs after a valid base event's
    fields (so duplicate keys and odd literals can be written)."""
    base = dict(convex_examples()["events"][0])
    del base["topic"], base["convex"]
    return orjson.dumps(base)[:-1] + b"".join(b"," + p.encode() for p in pairs) + b"}"


def array(*events: bytes) -> bytes:
    return b"[" + b",".join(events) + b"]"


GOOD = event(convex={"deployment_name": D})
# The one reading that differs, on purpose (log_stream._long_digit_runs): a number beyond a
# double written with an exponent, in a field the receiver does not read.
BEYOND_A_DOUBLE = {
    "1e400": raw_event('"topic":"console"', '"convex":{"deployment_name":"d"}', '"x":1e400'),
    "-1E+400 in a list": raw_event('"topic":"console"', '"convex":{"deployment_name":"e"}',
                                   '"x":[0, -1E+400]'),
    "fraction and exponent": raw_event('"topic":"console"', '"x":123.456E+400'),
}
HOSTILE = {
    "duplicate convex, other last": raw_event('"topic":"console"',
                                              '"convex":{"deployment_name":"d"}',
                                              '"convex":{"deployment_name":"e"}'),
    "duplicate convex, ours last": raw_event('"topic":"console"',
                                             '"convex":{"deployment_name":"e"}',
                                             '"convex":{"deployment_name":"d"}'),
    "duplicate name, other last": raw_event(
        '"topic":"console"', '"convex":{"deployment_name":"d","deployment_name":"e"}'),
    "duplicate name, ours last": raw_event(
        '"topic":"console"', '"convex":{"deployment_name":"e","deployment_name":"d"}'),
    "duplicate topic": raw_event('"topic":"console"', '"topic":"agent_usage"',
                                 '"convex":{"deployment_name":"d"}'),
    "duplicate topic, odd first": raw_event('"topic":5', '"topic":"console"',
                                            '"convex":{"deployment_name":"d"}'),
    "duplicate convex, odd last": raw_event('"topic":"console"',
                                            '"convex":{"deployment_name":"d"}', '"convex":5'),
    "escaped name key": raw_event('"topic":"console"',
                                  '"convex":{"deployment\\u005fname":"e"}'),
    "escaped name key after ours": raw_event(
        '"topic":"console"', '"convex":{"deployment_name":"d","deployment\\u005fname":"e"}'),
    "escaped topic key": raw_event('"to\\u0070ic":"agent_usage"',
                                   '"convex":{"deployment_name":"d"}'),
    "escaped convex key": raw_event('"topic":"console"',
                                    '"conv\\u0065x":{"deployment_name":"e"}'),
    "escaped name value": raw_event('"topic":"console"',
                                    '"convex":{"deployment_name":"\\u0065"}'),
    "name with a NUL": raw_event('"topic":"console"',
                                 '"convex":{"deployment_name":"d\\u0000"}'),
    "nested null": raw_event('"topic":null', '"convex":{"deployment_name":null}'),
    "convex null": raw_event('"topic":"console"', '"convex":null'),
    "convex a list": raw_event('"topic":"console"', '"convex":[{"deployment_name":"e"}]'),
    "name an object": raw_event('"topic":"console"',
                                '"convex":{"deployment_name":{"deployment_name":"e"}}'),
    "name a number": raw_event('"topic":"console"', '"convex":{"deployment_name":5}'),
    "topic a list": raw_event('"topic":["agent_usage"]', '"convex":{"deployment_name":"d"}'),
    "huge int": raw_event('"topic":"console"', '"convex":{"deployment_name":"d"}',
                          '"x":123456789012345678901234567890'),
    "400 digits": raw_event('"topic":"console"', '"convex":{"deployment_name":"d"}',
                            '"x":' + "9" * 400),
    "308 digits": raw_event('"topic":"console"', '"convex":{"deployment_name":"d"}',
                            '"x":' + "9" * 308),
    "1e-400": raw_event('"topic":"console"', '"convex":{"deployment_name":"d"}', '"x":1e-400'),
    "exponent in a string": raw_event('"topic":"console"', '"convex":{"deployment_name":"d"}',
                                      '"x":"a:1e400"'),
    "-0": raw_event('"topic":"console"', '"convex":{"deployment_name":"d"}', '"x":-0'),
    "NaN text": raw_event('"topic":"console"', '"convex":{"deployment_name":"d"}', '"x":NaN'),
    "Infinity text": raw_event('"topic":"console"', '"convex":{"deployment_name":"d"}',
                               '"x":-Infinity'),
    "lone surrogate": raw_event('"topic":"console"', '"convex":{"deployment_name":"d"}',
                                '"x":"\\udc00"'),
    "deep": raw_event('"topic":"console"', '"convex":{"deployment_name":"d"}',
                      '"x":' + "[" * 1010 + "]" * 1010),
}
ODD_BYTES = {
    "invalid UTF-8 in a skipped string": b'"x":"\xff\xfe"',
    "UTF-8 surrogate in a skipped key": b'"\xed\xa0\x80":1',
    "UTF-8 text": '"x":"ünïcødé ✓"'.encode(),
    "a raw control character": b'"x":"a\x01b"',
}


def bodies_of(events: dict[str, bytes]) -> list[tuple[str, bytes]]:
    out = []
    for name, one in events.items():
        out.append((f"{name} (array)", array(GOOD, one)))
        out.append((f"{name} (jsonl)", GOOD + b"\n" + one))
    return out


def odd_byte_bodies() -> list[tuple[str, bytes]]:
    out = []
    for name, pair in ODD_BYTES.items():
        one = raw_event('"topic":"console"', '"convex":{"deployment_name":"d"}')[:-1] \
            + b"," + pair + b"}"
        out.append((f"{name} (array)", array(GOOD, one)))
        out.append((f"{name} (jsonl)", GOOD + b"\n" + one))
    return out


JSONL_EDGES = {
    "blank lines": GOOD + b"\n\n\n" + GOOD + b"\n",
    "CRLF": GOOD + b"\r\n" + GOOD + b"\r\n",
    "trailing whitespace": GOOD + b" \t\n" + GOOD + b"   ",
    "form feed line": GOOD + b"\n\x0c\n" + GOOD,
    "form feed after an event": GOOD + b"\x0c\n" + GOOD,
    "a line that is an array": GOOD + b"\n" + array(GOOD, GOOD),
    "a JSON array on one JSONL line, then more": array(GOOD) + b"\n" + GOOD,
    "two events on one line": GOOD + b" " + GOOD,
    "two events on one line with a comma": GOOD + b"," + GOOD,
    "an event split over two lines": GOOD[:40] + b"\n" + GOOD[40:],
    "a non-object line": GOOD + b"\n7\nnull\n\"s\"",
    "BOM before an array": BOM + array(GOOD, GOOD),
    "BOM before JSONL": BOM + GOOD + b"\n" + GOOD,
    "BOM on the second line": GOOD + b"\n" + BOM + GOOD,
    "whitespace around an array": b" \r\n\t" + array(GOOD) + b"\n\n",
    "an array with non-objects": array(GOOD, b"7", b"null", b"[]", b'"d"'),
    "an empty array": b"[]",
    "an object, not an array": GOOD,
    "an array and trailing text": array(GOOD) + b"x",
    "two arrays": array(GOOD) + b"\n" + array(GOOD),
    "empty": b"",
    "only whitespace": b" \n\r\n ",
}


@pytest.mark.parametrize(("name", "body"), [
    *bodies_of(HOSTILE), *odd_byte_bodies(), *JSONL_EDGES.items()])
def test_receiver_and_worker_read_hostile_bodies_alike(name: str, body: bytes) -> None:
    assert_same_reading(body)


@pytest.mark.parametrize(("name", "accepted"), [
    ("duplicate convex, other last", False), ("duplicate convex, ours last", True),
    ("duplicate name, other last", False), ("duplicate name, ours last", True),
    ("escaped name key", False), ("escaped name key after ours", False),
    ("escaped convex key", False), ("escaped topic key", False), ("duplicate topic", False),
    ("escaped name value", False), ("400 digits", False),
    ("huge int", True), ("-0", True), ("1e-400", True), ("exponent in a string", True),
])
def test_the_last_of_duplicate_keys_and_escaped_keys_count(name: str, accepted: bool) -> None:
    # What each reading does with them, pinned: the parity above would also hold if both
    # changed together, which would change what bills whom.
    for body in (array(GOOD, HOSTILE[name]), GOOD + b"\n" + HOSTILE[name]):
        assert (assert_same_reading(body)[0] == "accepted") is accepted


def test_the_typed_decode_reads_ordinary_bodies() -> None:
    # The fast path must not silently fall back for what Convex sends (hex ids with
    # digit-e-digit, floats, unicode are ordinary; a number with an exponent is not, and is
    # read by parse_events).
    events = convex_examples()["events"]
    for body in (orjson.dumps(events), b"\n".join(orjson.dumps(e) for e in events)):
        typed = log_stream._typed_events(body, MAX_EVENTS)
        assert typed is not None
        assert len(typed) == len(events)
    assert log_stream._typed_events(array(event(x=0.5, y="ünï", z=-3)), 10) is not None


@pytest.mark.parametrize("name", sorted(BEYOND_A_DOUBLE))
def test_an_exponent_beyond_a_double_bills_nobody(name: str) -> None:
    # The receiver does not look for it (it would cost a scan as long as the decode): it
    # accepts the body if the fields it reads allow, the worker cannot read the body and
    # dead-letters it whole. Nothing in it is counted, for the signer or anyone else.
    body = array(GOOD, BEYOND_A_DOUBLE[name])
    reference = outcome(body, typed=False)
    assert reference[0] == "refused"
    assert str(reference[1]).startswith("malformed JSON: number is infinity")
    if name == "-1E+400 in a list":  # it also names another deployment: refused still
        assert outcome(body, typed=True)[3] == "several_deployments"
        return
    assert outcome(body, typed=True)[:2] == ("accepted", 2)
    split = split_body(body, 0, 0)
    assert split.routed == {}
    assert [letter["event_index"] for letter in split.dead_letters] == [None]


@pytest.mark.parametrize("offset", range(0, 160, 7))
def test_every_long_run_of_digits_sends_the_body_to_the_reference_reading(offset: int) -> None:
    body = b" " * offset + b'[{"x":' + b"9" * 309 + b"}]"
    assert log_stream._long_digit_runs(body)
    assert outcome(body, typed=True)[0] == "refused"


# --- generated bodies ----------------------------------------------------------------------

NAMES = st.sampled_from(['"d"', '"e"', '""', "5", "null", "{}", '"\\u0064"', '"\\u0065"'])
NAME_KEYS = st.sampled_from(['"deployment_name"', '"deployment\\u005fname"', '"x"'])
CONVEX = st.one_of(
    st.lists(st.tuples(NAME_KEYS, NAMES), max_size=3).map(
        lambda pairs: "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"),
    st.sampled_from(["null", "5", '"d"', "[]"]))
TOPICS = st.sampled_from(['"console"', '"function_execution"', '"agent_usage"', '"made_up"',
                          "5", "null", '["console"]'])
# Every odd number but an exponent beyond a double (test_an_exponent_beyond_a_double_...).
NUMBERS = st.sampled_from(["0", "-0", "1e-400", "1.5e3", "4e63",
                           "123456789012345678901234567890", "9" * 400, "NaN", "01", '"4e400"',
                           "1e300", "-1e308"])
PAIRS = st.lists(st.one_of(
    st.tuples(st.sampled_from(['"topic"', '"to\\u0070ic"']), TOPICS),
    st.tuples(st.sampled_from(['"convex"', '"conv\\u0065x"']), CONVEX),
    st.tuples(st.sampled_from(['"timestamp"', '"x"']), NUMBERS),
), max_size=5)
EVENTS = st.one_of(
    PAIRS.map(lambda pairs: raw_event(*(f"{k}:{v}" for k, v in pairs))),
    st.sampled_from([b"7", b"null", b'"d"', b"[]", GOOD, array(GOOD)]))


@st.composite
def generated_bodies(draw: st.DrawFn) -> bytes:
    events = draw(st.lists(EVENTS, max_size=4))
    if draw(st.booleans()):
        body = b"[" + draw(st.sampled_from([b",", b", ", b",\n"])).join(events) + b"]"
    else:
        lines = [*events, *draw(st.lists(st.sampled_from([b"", b"  ", b"\r", b"\x0c"]),
                                         max_size=2))]
        lines = draw(st.permutations(lines))
        body = draw(st.sampled_from([b"\n", b"\r\n", b" \n"])).join(lines)
    prefix = draw(st.sampled_from([b"", b"", b" ", b"\n", BOM]))
    return prefix + body


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated_bodies())
def test_generated_bodies_are_read_alike(body: bytes) -> None:
    assert_same_reading(body)
