"""The Kafka security variables: what they accept, and every refusal, listed at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterstream.core.config import ConfigError, KafkaSecurity, Settings
from tests.support.tls import Authority

SASL = {"METERSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "METERSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "METERSTREAM_KAFKA_USERNAME": "metering",
        "METERSTREAM_KAFKA_PASSWORD": "pa55-word"}


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority(tmp_path_factory.mktemp("ca"))


def problems(env: dict[str, str]) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as error:
        Settings.from_env(env)
    return error.value.problems


def test_the_default_is_plaintext_without_credentials() -> None:
    assert Settings.from_env({}).kafka_security == KafkaSecurity()
    assert KafkaSecurity().protocol == "PLAINTEXT"


def test_sasl_ssl_with_scram_and_a_ca(authority: Authority) -> None:
    security = Settings.from_env({**SASL, "METERSTREAM_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
                                  "METERSTREAM_KAFKA_SASL_MECHANISM": "scram-sha-512",
                                  "METERSTREAM_KAFKA_CA_FILE": str(authority.pem)}
                                 ).kafka_security
    assert security == KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", "metering", "pa55-word",
                                     authority.pem)
    assert security.sasl
    assert security.tls
    assert "pa55-word" not in repr(Settings.from_env(SASL))


def test_the_password_may_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text("from-a-file\n")
    env = {**SASL, "METERSTREAM_KAFKA_PASSWORD": "",
           "METERSTREAM_KAFKA_PASSWORD_FILE": str(secret)}
    assert Settings.from_env(env).kafka_security.password == "from-a-file"
    assert problems({**env, "METERSTREAM_KAFKA_PASSWORD": "too"}) == (
        "set METERSTREAM_KAFKA_PASSWORD or METERSTREAM_KAFKA_PASSWORD_FILE, not both",)


def test_a_sasl_protocol_without_its_login_lists_every_missing_variable() -> None:
    assert problems({"METERSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}) == (
        "METERSTREAM_KAFKA_SASL_MECHANISM must be one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 "
        "with METERSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT, got ''",
        "METERSTREAM_KAFKA_USERNAME must be set with "
        "METERSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT",
        "METERSTREAM_KAFKA_PASSWORD must be set with "
        "METERSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT",
    )


@pytest.mark.parametrize(("name", "value", "message"), [
    ("METERSTREAM_KAFKA_SECURITY_PROTOCOL", "TLS",
     "METERSTREAM_KAFKA_SECURITY_PROTOCOL must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, "
     "SASL_SSL, got 'TLS'"),
    ("METERSTREAM_KAFKA_SASL_MECHANISM", "GSSAPI",
     "METERSTREAM_KAFKA_SASL_MECHANISM must be one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 "
     "with METERSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_SSL, got 'GSSAPI'"),
    ("METERSTREAM_KAFKA_CA_FILE", "/no/such/ca.pem",
     "METERSTREAM_KAFKA_CA_FILE: '/no/such/ca.pem' is not a file"),
    ("METERSTREAM_KAFKA_CERT_FILE", "/no/such/cert.pem",
     "METERSTREAM_KAFKA_CERT_FILE: '/no/such/cert.pem' is not a file"),
    ("METERSTREAM_KAFKA_KEY_FILE", "/no/such/key.pem",
     "METERSTREAM_KAFKA_KEY_FILE: '/no/such/key.pem' is not a file"),
])
def test_a_bad_value_is_refused_naming_the_variable(name: str, value: str,
                                                     message: str) -> None:
    assert message in problems({**SASL, name: value})


def test_credentials_without_a_sasl_protocol_are_refused() -> None:
    # Most likely the protocol was forgotten: the clients would connect unauthenticated.
    assert problems({"METERSTREAM_KAFKA_USERNAME": "u", "METERSTREAM_KAFKA_PASSWORD": "p"}) == (
        "METERSTREAM_KAFKA_USERNAME, METERSTREAM_KAFKA_PASSWORD apply only with "
        "METERSTREAM_KAFKA_SECURITY_PROTOCOL SASL_PLAINTEXT or SASL_SSL, not PLAINTEXT",)


def test_tls_files_without_a_tls_protocol_are_refused(authority: Authority) -> None:
    env = {**SASL, "METERSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
           "METERSTREAM_KAFKA_CA_FILE": str(authority.pem)}
    assert problems(env) == (
        "METERSTREAM_KAFKA_CA_FILE apply only with METERSTREAM_KAFKA_SECURITY_PROTOCOL SSL or "
        "SASL_SSL, not SASL_PLAINTEXT",)


def test_a_key_without_its_certificate_is_refused(authority: Authority) -> None:
    key = authority.issue("client").key
    assert problems({"METERSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
                     "METERSTREAM_KAFKA_KEY_FILE": str(key)}) == (
        "METERSTREAM_KAFKA_KEY_FILE needs METERSTREAM_KAFKA_CERT_FILE (the certificate it "
        "is the key of)",)


def test_a_ca_file_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    (problem,) = problems({**SASL, "METERSTREAM_KAFKA_CA_FILE": str(junk)})
    assert problem.startswith(f"METERSTREAM_KAFKA_CA_FILE: {str(junk)!r} holds no PEM "
                              "certificate (")


def test_a_key_of_another_certificate_is_refused(authority: Authority) -> None:
    one, other = authority.issue("one"), authority.issue("other")
    (problem,) = problems({"METERSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
                           "METERSTREAM_KAFKA_CERT_FILE": str(one.cert),
                           "METERSTREAM_KAFKA_KEY_FILE": str(other.key)})
    assert problem.startswith("METERSTREAM_KAFKA_KEY_FILE: cannot load the client "
                              "certificate and its key (")


def test_an_encrypted_key_is_refused_without_prompting(authority: Authority) -> None:
    locked = authority.issue("locked", password=b"secret")
    (problem,) = problems({"METERSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
                           "METERSTREAM_KAFKA_CERT_FILE": str(locked.cert),
                           "METERSTREAM_KAFKA_KEY_FILE": str(locked.key)})
    assert problem.endswith("they must be PEM, the key unencrypted")


def test_a_client_certificate_holding_its_key_needs_no_key_file(authority: Authority) -> None:
    issued = authority.issue("combined")
    combined = issued.cert.parent / "combined-with-key.pem"
    combined.write_bytes(issued.cert.read_bytes() + issued.key.read_bytes())
    security = Settings.from_env({"METERSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
                                  "METERSTREAM_KAFKA_CERT_FILE": str(combined)}
                                 ).kafka_security
    assert security.cert_file == combined
    assert security.key_file is None


def test_kafka_problems_are_listed_with_the_others() -> None:
    found = problems({"METERSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                      "METERSTREAM_RECEIVER_PORT": "eighty"})
    assert len(found) == 4
    assert any(p.startswith("METERSTREAM_RECEIVER_PORT") for p in found)
