"""No shopper's words, customer id, email or token in any log line, at any level, from any library.

The database engine hides bound parameters (`hide_parameters`, core/config.py), so a failed write never
echoes a chat message. As a second line, every log record is scrubbed as it is made (message, arguments and
traceback): signed query values (`logged_in_customer_id`, `signature`, `hmac`, `id_token`...), session tokens
and other JWTs, Shopify access tokens, bearer tokens, email addresses and SQL parameter lists."""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"
PATTERNS = (
    (re.compile(r"\[parameters: .*?\](?=\s*(\n|\(Background|$))", re.S), "[parameters: hidden]"),
    (re.compile(r"(?i)\b(logged_in_customer_id|customer_id|customer|signature|hmac|id_token|session_id|token|"
                r"access_token|refresh_token|code|email|message|visitor|state)=([^&\s\"'<>]+)"), rf"\1={REDACTED}"),
    (re.compile(r"(?i)\"(message|content|email|customer|customer_ref|session_id|token)\"\s*:\s*\"(?:[^\"\\]|\\.)*\""),
     rf'"\1": "{REDACTED}"'),
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), REDACTED),  # JWTs (session tokens)
    (re.compile(r"\bshp(?:at|ca|pa|ss|ua|rt|tka)_[A-Za-z0-9]+"), REDACTED),  # Shopify access tokens
    (re.compile(r"(?i)\bbearer\s+\S+"), f"Bearer {REDACTED}"),
    (re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"), REDACTED),  # email addresses
    (re.compile(r"\bcustomer:\d+"), f"customer:{REDACTED}"),  # the limits' and caches' keys
)


def scrub(text: str) -> str:
    for pattern, replacement in PATTERNS:
        text = pattern.sub(replacement, text)
    return text


_traceback_formatter = logging.Formatter()


def install() -> None:
    """Scrub every log record of the process as it is made (idempotent: the app factory calls it)."""
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "scrubs", False):
        return

    def scrubbed_record(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            record.msg, record.args = scrub(record.getMessage()), None
        except Exception:  # a malformed format string: keep what can be said safely
            record.msg, record.args = scrub(str(record.msg)), None
        if record.exc_info and not record.exc_text:
            record.exc_text = scrub(_traceback_formatter.formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return record

    scrubbed_record.scrubs = True
    logging.setLogRecordFactory(scrubbed_record)
