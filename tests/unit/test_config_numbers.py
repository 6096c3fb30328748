"""The numeric settings' table (meterstream/core/config.py NUMBERS) agrees with the
Settings fields and the documented variables."""

from __future__ import annotations

import dataclasses

import pytest

from meterstream.core.config import DEFAULTS, NUMBERS, ConfigError, Settings


def test_every_numeric_setting_is_a_field_of_its_type_with_a_valid_default() -> None:
    fields = {field.name: field.type for field in dataclasses.fields(Settings)}
    for field, (name, kind, low, high) in NUMBERS.items():
        assert fields[field] in (kind.__name__, kind), field
        assert name in DEFAULTS, name
        assert low <= kind(DEFAULTS[name]) <= high, name
    assert Settings.from_env({}).partitions == int(DEFAULTS["METERSTREAM_PARTITIONS"])


def test_every_bad_number_is_listed_at_once() -> None:
    env = {"METERSTREAM_PARTITIONS": "0", "METERSTREAM_LATE_GRACE": "soon"}
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env)
    assert raised.value.problems == (
        "METERSTREAM_PARTITIONS must be between 1 and 1024, got '0'",
        "METERSTREAM_LATE_GRACE must be a number, got 'soon'",
    )
