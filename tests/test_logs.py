"""Nothing a shopper wrote, no customer id, email or token reaches a log line, at any level, from any logger:
not through a failed database write (the engine hides parameters), not through a traceback, not through a
request line."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import event

from core import logs
from core.shopify.signatures import signed_app_proxy_query
from core.storage.models import db
from tests.conftest import API_SECRET

MARKER = "zebra-marker-7Q4X"
CUSTOMER = "880011223344"
EMAIL = "shopper.private@example.org"


@pytest.fixture
def everything_logged(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


def all_text(caplog) -> str:
    """Every record as a handler would write it, tracebacks included."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(formatter.format(record) for record in caplog.records)


@pytest.fixture
def broken_conversation_writes(app):
    """Writes to the conversations table fail in the real database, with the real parameters bound (the
    shopper's message among them), as a locked or full database would fail them."""
    def break_writes(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(("INSERT INTO CONVERSATIONS", "UPDATE CONVERSATIONS")):
            statement = statement.replace("conversations", "conversations_missing", 1)
        return statement, parameters

    event.listen(db.engine, "before_cursor_execute", break_writes, retval=True)
    yield
    event.remove(db.engine, "before_cursor_execute", break_writes)


def test_a_failed_chat_write_logs_no_shopper_words_or_customer(client, installed_shop, broken_conversation_writes,
                                                               everything_logged):
    url = "/proxy/chat?" + signed_app_proxy_query(installed_shop.domain, API_SECRET, logged_in_customer_id=CUSTOMER)
    response = client.post(url, json={"session_id": "session-logs-01",
                                      "message": f"{MARKER} my email is {EMAIL}, is the tent in stock?"})
    assert response.status_code == 503  # the database is "away": said so, nothing lost silently, no trace
    text = all_text(everything_logged)
    assert "database error" in text  # the failure is logged...
    for secret in (MARKER, CUSTOMER, EMAIL):  # ...without what the shopper wrote or who they are
        assert secret not in text
        assert secret not in response.get_data(as_text=True)


@pytest.mark.parametrize("line, secret", [
    ('"GET /apps/pairwell/chat?logged_in_customer_id=880011223344&signature=abc123 HTTP/1.1" 200', CUSTOMER),
    ('"GET /?shop=s.myshopify.com&id_token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJl HTTP/1.1" 200',
     "eyJzdWIiOiI0MiJ9"),
    ("Authorization: Bearer abc.def.ghi failed", "abc.def.ghi"),
    ("token shpat_0123456789abcdef0123456789abcdef refused", "shpat_0123456789abcdef"),
    ("handoff to shopper.private@example.org", EMAIL),
    ('body {"session_id": "s-1234567890", "message": "zebra-marker-7Q4X"}', MARKER),
    ("limit for customer:880011223344 reached", CUSTOMER),
    ("(psycopg.errors.X) boom\n[SQL: INSERT INTO conversations VALUES (%(m)s)]\n[parameters: {'m': "
     "'zebra-marker-7Q4X'}]\n(Background on this error at: https://sqlalche.me/e/20/f405)", MARKER),
])
@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR])
def test_any_logger_at_any_level_is_scrubbed(app, everything_logged, line, secret, level):
    logging.getLogger("werkzeug").log(level, "%s", line)
    logging.getLogger("some.library").log(level, line)
    assert secret not in all_text(everything_logged)
    assert len(everything_logged.records) == 2


def test_tracebacks_are_scrubbed(app, everything_logged):
    try:
        raise ValueError(f"could not reach {EMAIL}")
    except ValueError:
        logging.getLogger("worker.tasks").exception("job failed")
    text = all_text(everything_logged)
    assert "ValueError" in text and "job failed" in text
    assert EMAIL not in text


def test_the_engine_hides_parameters(app):
    assert db.engine.hide_parameters
    assert logs.scrub("[parameters: ('secret words',)]") == "[parameters: hidden]"
