import io
import logging

import pytest
from pydantic import SecretStr

from pipeline.common.logs import JsonFormatter, TextFormatter, redact, register_secret
from pipeline.kafka.settings import KafkaSettings


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()])
def test_registered_secrets_and_password_fields_are_masked(formatter):
    secret = 'pa"ss\\word-77'  # JSON escapes both the quote and the backslash
    KafkaSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password=SecretStr(secret),
    )  # validating the settings registers the secret
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("test-redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("config %s", {"sasl_plain_password": secret})
        logger.warning("login", extra={"db_password": "other-value", "user": "u"})
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert secret not in text and '\\"ss\\\\word' not in text
    assert "other-value" not in text and "user" in text
    assert text.count("***") == 2


def test_short_values_are_not_registered():
    register_secret("ab")
    assert redact("abc") == "abc"
