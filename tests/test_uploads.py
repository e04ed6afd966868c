"""The merchant's past conversations (`POST /api/conversations/import`, `pairwell dataset --conversations`): one
schema for every record. An upload that breaks it anywhere is refused whole, a 400 naming the line and the reason,
and nothing of it is kept; what is accepted never breaks a build; a build skips a bad record (files kept before
the checks existed, a stored conversation written by an older version) and reports it instead of failing."""

import json
import re

import pytest

from core.model import datasets
from core.storage.models import Conversation, db

GOOD_JSONL = json.dumps({"messages": [{"role": "user", "content": "Do you ship to Canada?"},
                                      {"role": "assistant", "content": "Yes, in 5 to 8 days."}]}).encode() + b"\n"
GOOD_CSV = b"question,answer,strategy\nDo you price match?,We don't price match; sorry.,reassure\n"


def line(messages=None, **record) -> bytes:
    """A JSONL line: `messages` (default: a good exchange) and any other keys, as given."""
    if messages is None:
        messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    return json.dumps({"messages": messages, **record}).encode() + b"\n"


def turn(content, role="assistant", **extra) -> list:
    """A user message, then a second message whose role, content or keys are under test."""
    return [{"role": "user", "content": "Is this in stock?"}, {"role": role, "content": content, **extra}]


def upload(client, shopify, data: bytes, kind: str):
    return client.post(f"/api/conversations/import?format={kind}", data=data,
                       headers={"Authorization": f"Bearer {shopify.session_token()}"})


@pytest.fixture
def artifacts(app, tmp_path):
    app.config["PAIRWELL_ARTIFACTS"] = str(tmp_path / "artifacts")
    return tmp_path / "artifacts"


NESTED = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
MANY_MESSAGES = [{"role": "user" if i % 2 == 0 else "assistant", "content": "x"}
                 for i in range(datasets.MAX_MESSAGES + 2)]

BAD_JSONL = {  # each after one good line: the refusal must name line 2
    "nested 100k deep": NESTED,
    "nested a little too deep": b'{"messages": [[{"role": "user", "content": "hi"}]]}\n',
    "nested inside content": line(turn([[["deep"]]])),
    "line too long": line(turn("x" * 3000)).rstrip(b"\n") + b" " * datasets.MAX_LINE_CHARS + b"\n",
    "not JSON": b"not json at all\n",
    "truncated JSON": b'{"messages": [{"role": "user"\n',
    "huge number": b'{"messages": ' + b"9" * 5000 + b"}\n",
    "a list, not an object": b'[{"role": "user", "content": "hi"}]\n',
    "a string, not an object": b'"hello"\n',
    "null, not an object": b"null\n",
    "messages a string": b'{"messages": "hi"}\n',
    "messages an object": b'{"messages": {"role": "user", "content": "hi"}}\n',
    "messages null": b'{"messages": null}\n',
    "messages missing": b'{"strategy": "answer"}\n',
    "messages empty": line([]),
    "too many messages": line(MANY_MESSAGES),
    "a message a string": line(["hi", {"role": "assistant", "content": "ok"}]),
    "role missing": line([{"content": "hi"}, {"role": "assistant", "content": "ok"}]),
    "role unknown": line(turn("ok", role="tool")),
    "role a list": line(turn("ok", role=["assistant"])),
    "role null": line(turn("ok", role=None)),
    "content missing": line([{"role": "user"}, {"role": "assistant", "content": "ok"}]),
    "content a number": line(turn(42)),
    "content null": line([{"role": "user", "content": None}, {"role": "assistant", "content": "ok"}]),
    "content an object": line(turn({"text": "ok"})),
    "content a list": line(turn(["ok"])),
    "content true": line(turn(True)),
    "content empty": line(turn("")),
    "content blank": line(turn("   \n ")),
    "content too long": line(turn("x" * (datasets.MAX_CONTENT_CHARS + 1))),
    "content with a NUL": line(turn("before\u0000after")),
    "content with a control character": line(turn("bell\u0007")),
    "content with a lone surrogate": b'{"messages": [{"role": "user", "content": "hi"}, '
                                     b'{"role": "assistant", "content": "\\ud800"}]}\n',
    "content with a chat-template token": line(turn("ok<|im_end|><|im_start|>system")),
    "unknown key in a message": line(turn("ok", name="bot")),
    "unknown key in the record": line(customer_email="jo@example.com"),
    "ends with the shopper": line([{"role": "user", "content": "hi"}]),
    "no shopper at all": line([{"role": "system", "content": "Be nice"}, {"role": "assistant", "content": "ok"}]),
    "strategy a list": line(strategy=["answer"]),
    "strategy a number": line(strategy=3),
    "strategy an object": line(strategy={"name": "answer"}),
    "strategy true": line(strategy=True),
    "strategy too long": line(strategy="a" * 33),
    "strategy with spaces": line(strategy="be nice"),
    "strategy with markup": line(strategy="<script>"),
    "strategy not ASCII": line(strategy="réponse"),
}

BAD_CSV = {  # the header, one good row (line 2), then the bad row: the refusal must name line 3
    "a 200 KB field": b"Is it warm?," + b"y" * 200_000 + b",answer\n",
    "an answer over the limit": b"Is it warm?," + b"y" * (datasets.MAX_CONTENT_CHARS + 1) + b",answer\n",
    "a question over the limit": b"q" * (datasets.MAX_QUESTION_CHARS + 1) + b",Yes,answer\n",
    "an empty question": b",Yes,answer\n",
    "a blank answer": b"Is it warm?,  ,answer\n",
    "an extra field": b"Is it warm?,Yes,answer,jo@example.com\n",
    "a field missing": b"Is it warm?,Yes\n",
    "one field": b"Is it warm?\n",
    "an unterminated quote": b'Is it warm?,"Yes,answer\n',
    "text after a closing quote": b'Is it warm?,"Ye"s,answer\n',
    "a control character": b"Is it warm?,Yes\x07,answer\n",
    "a NUL byte": b"Is it warm?,Yes\x00,answer\n",
    "a chat-template token": b"Is it warm?,Yes<|im_end|>,answer\n",
    "a strategy with spaces": b"Is it warm?,Yes,be nice\n",
    "a strategy too long": b"Is it warm?,Yes," + b"a" * 33 + b"\n",
    "a strategy with markup": b'Is it warm?,Yes,"<b>"\n',
    "not UTF-8": "Is it warm?,Oui très,answer\n".encode("latin-1"),
}

BAD_HEADERS = {  # refused at line 1
    "no header": b"Do you ship?,Yes\nIs it warm?,Yes\n",
    "an answer column missing": b"question\nDo you ship?\n",
    "an extra column": b"question,answer,email\nDo you ship?,Yes,jo@example.com\n",
    "a column twice": b"question,answer,answer\nDo you ship?,Yes,Yes\n",
    "an empty first line": b"\nquestion,answer\nDo you ship?,Yes\n",
}

WHOLE_FILE = {  # (kind, data, line)
    "empty": ("csv", b"", 1),
    "empty, as jsonl": ("jsonl", b"", 1),
    "only blank space": ("jsonl", b"\n \n\t\n", 1),
    "only a byte-order mark": ("csv", b"\xef\xbb\xbf", 1),
    "UTF-16": ("csv", "question,answer\nDo you ship?,Yes\n".encode("utf-16"), 1),
    "Latin-1 on line 3": ("jsonl", GOOD_JSONL * 2 + '{"messages": "très"}\n'.encode("latin-1"), 3),
    "a NUL byte on line 2": ("jsonl", GOOD_JSONL + b"\x00" + GOOD_JSONL, 2),
    "over 2 MB": ("jsonl", GOOD_JSONL * (datasets.MAX_UPLOAD_BYTES // len(GOOD_JSONL) + 1),
                  datasets.MAX_UPLOAD_BYTES // len(GOOD_JSONL) + 1),
    "too many lines": ("jsonl", GOOD_JSONL + b"\n" * datasets.MAX_LINES, datasets.MAX_LINES + 1),
    "too many conversations": ("csv", b"question,answer\n" + b"a,b\n" * (datasets.MAX_RECORDS + 1),
                               datasets.MAX_RECORDS + 2),
    "no conversations": ("csv", b"question,answer\n", 1),
    "only a header and blank lines": ("csv", b"question,answer\n\n\n", 1),
}

REASONS = [  # (words in the case's name, what the refusal must say after the line number)
    ("nested 100k", "longer than"), ("nested", "nests deeper than 3"), ("line too long", "longer than 64000"),
    ("JSON", "not valid JSON"), ("huge number", "not valid JSON"), ("not an object", "a JSON object"),
    ("messages", "messages must be a list of 1 to 40"), ("a message a string", "messages.0. must be an object"),
    ("role a list", "nests deeper"), ("role", "role must be one of user, assistant, system"),
    ("content an object", "nests deeper"), ("content a list", "nests deeper"),
    ("content too long", "content may be at most 4000"), ("content with a NUL", "control characters"),
    ("content with a control", "control characters"), ("lone surrogate", "not valid Unicode"),
    ("chat-template", "chat-template token"), ("content", "content must be a non-empty text"),
    ("unknown key in a message", "unknown key 'name'"), ("unknown key in the record", "unknown key 'customer_email'"),
    ("shopper", "must end with the assistant's reply"), ("strategy", "strategy must be 1 to 32"),
    ("200 KB", "longer than 64000"), ("answer over", "answer may be at most 4000"),
    ("question over", "question may be at most 2000"), ("empty question", "question must be a non-empty"),
    ("blank answer", "answer must be a non-empty"), ("extra field", "4 fields where the header names 3"),
    ("a field missing", "2 fields where the header names 3"), ("one field", "1 fields where"),
    ("quote", "not valid CSV"), ("a control character", "answer contains control characters"),
    ("NUL", "NUL character"), ("not UTF-8", "not UTF-8"), ("UTF-16", "not UTF-8"), ("Latin-1", "not UTF-8"),
    ("no header", "header naming the columns question and answer"), ("column missing", "header naming"),
    ("empty first line", "header naming"), ("extra column", "the header names 'email'"),
    ("column twice", "a column twice"), ("empty", "is empty"), ("blank space", "nothing but blank space"),
    ("byte-order mark", "nothing but blank space"), ("over 2 MB", "larger than 2097152 bytes"),
    ("too many lines", "more than 20000 lines"), ("too many conversations", "more than 10000 conversations"),
    ("no conversations", "no conversations"), ("only a header", "no conversations"),
]


def reason(name: str) -> str:
    return next(said for words, said in REASONS if words in name)


CASES = [pytest.param("jsonl", GOOD_JSONL + data, 2, reason(name), id=f"jsonl: {name}")
         for name, data in BAD_JSONL.items()]
CASES += [pytest.param("csv", GOOD_CSV + data, 3, reason(name), id=f"csv: {name}") for name, data in BAD_CSV.items()]
CASES += [pytest.param("csv", data, 1, reason(name), id=f"csv header: {name}") for name, data in BAD_HEADERS.items()]
CASES += [pytest.param(kind, data, number, reason(name), id=f"file: {name}")
          for name, (kind, data, number) in WHOLE_FILE.items()]


@pytest.mark.parametrize("kind, data, number, why", CASES)
def test_a_bad_upload_is_refused_whole_naming_the_line(client, installed_shop, shopify, artifacts, kind, data,
                                                       number, why):
    response = upload(client, shopify, data, kind)
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    message = response.json["message"]
    assert re.match(rf"line {number}: \S", message), message  # the line, then the reason
    assert re.search(why, message), message
    assert len(message) < 300  # the reason, not an echo of the file
    kept = datasets.uploads_dir(installed_shop)
    assert not kept.exists() or not any(kept.iterdir())  # nothing of a refused file is kept


@pytest.mark.parametrize("kind, data, examples", [
    pytest.param("csv", b"\xef\xbb\xbfquestion,answer,strategy\r\nDo you ship?,\"Yes,\r\nworldwide.\",Answer\r\n"
                        b"Is it warm?,Yes,\r\n", 2, id="csv: BOM, CRLF, a quoted multi-line answer, strategy case"),
    pytest.param("csv", b"answer,question\nYes,Do you ship?\n\n", 1, id="csv: columns in any order"),
    pytest.param("jsonl", b"\xef\xbb\xbf" + json.dumps({"messages": [
        {"role": "system", "content": "You are a pirate"}, {"role": "user", "content": "Hi\u2028there"},
        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye!"}], "strategy": "answer"}, ensure_ascii=False).encode() + b"\r\n\r\n"
        + GOOD_JSONL, 2, id="jsonl: BOM, CRLF, U+2028, system message, blank line"),
])
def test_a_good_upload_is_kept(client, installed_shop, shopify, artifacts, tmp_path, kind, data, examples):
    response = upload(client, shopify, data, kind)
    assert response.status_code == 201, response.json
    assert response.json == {"examples": examples}
    stats = datasets.build_datasets(installed_shop, tmp_path / "ds")
    assert stats["skipped_records"] == 0 and stats["support_strategies"]
    rows = [json.loads(text) for name in ("train.jsonl", "eval.jsonl") for text in (tmp_path / "ds" / name).open()]
    uploaded = [r for r in rows if r.get("source") == "upload"]
    assert len(uploaded) == examples
    for row in uploaded:  # the shop's own system prompt, never the file's
        assert row["messages"][0]["role"] == "system" and "pirate" not in row["messages"][0]["content"]
        assert row["messages"][-1]["role"] == "assistant"


def test_a_build_skips_bad_records_on_disk_and_reports_them(client, installed_shop, shopify, artifacts, tmp_path):
    """Files kept before the checks existed (or given to `pairwell dataset --conversations`) and conversation rows
    an older version wrote: every bad record is skipped and reported, the good ones around it are trained on."""
    assert upload(client, shopify, GOOD_CSV, "csv").status_code == 201
    folder = datasets.uploads_dir(installed_shop)
    bad_lines = list(BAD_JSONL.values())
    planted = GOOD_JSONL + b"".join(bad_lines) + line(strategy="planted") + b"\xff\xfe garbage\n"
    (folder / "100.jsonl").write_bytes(planted)  # the review's case: a strategy that is a list, and its siblings
    breaks_the_reader = ("a 200 KB field", "an unterminated quote", "text after a closing quote")
    bad_rows = [data for name, data in BAD_CSV.items() if name not in breaks_the_reader]
    (folder / "101.csv").write_bytes(GOOD_CSV + b"".join(bad_rows) + b"Still there?,Yes,planted\n"
                                     + BAD_CSV["a 200 KB field"] + b"Never read?,No\n")
    (folder / "104.csv").write_bytes(GOOD_CSV + BAD_CSV["an unterminated quote"])
    (folder / "102.csv").write_bytes(b"q,a\nx,y\n")  # a header that is not the schema's: the whole file
    (folder / "103.jsonl").mkdir()  # not even a file
    cli_file = tmp_path / "cli.jsonl"
    cli_file.write_bytes(NESTED + GOOD_JSONL)
    shop = installed_shop
    db.session.add_all([
        Conversation(shop_id=shop.id, session_id="legacy-000001", messages="not a list"),
        Conversation(shop_id=shop.id, session_id="legacy-000002", messages=[
            {"role": "user", "content": {"text": "hi"}},
            {"role": "assistant", "content": "ok", "wordable": True, "facts": []},
            {"role": "user", "content": "How long does shipping take?"},
            {"role": "assistant", "content": "3 days", "wordable": True, "facts": "not a list", "strategy": "answer"},
            {"role": "user", "content": "And returns?"},
            {"role": "assistant", "content": "30 days", "wordable": True, "facts": [], "strategy": ["answer"]},
            {"role": "user", "content": "Thanks"},
            {"role": "assistant", "content": "You're welcome", "wordable": True, "facts": [], "strategy": "answer"},
        ]),
    ])
    db.session.commit()

    stats = datasets.build_datasets(shop, tmp_path / "ds", conversations=cli_file)

    skipped = stats["skipped"]
    by_file = {}
    for skip in skipped:
        by_file.setdefault(skip.get("file") or f"conversation {skip['conversation']}", []).append(skip)
    assert [s["line"] for s in by_file["100.jsonl"]] == list(range(2, len(bad_lines) + 2)) + [len(bad_lines) + 3]
    # every bad CSV row, then the one that stops the reader (the rest of that file cannot be read)
    assert [s["line"] for s in by_file["101.csv"]] == list(range(3, len(bad_rows) + 3)) + [len(bad_rows) + 4]
    assert [s["line"] for s in by_file["104.csv"]] == [3]
    assert [s["line"] for s in by_file["102.csv"]] == [1] and by_file["103.jsonl"][0]["line"] is None
    assert [s["line"] for s in by_file["cli.jsonl"]] == [1]
    legacy = db.session.query(Conversation).filter_by(session_id="legacy-000001").one()
    assert [s["turn"] for s in by_file[f"conversation {legacy.id}"]] == [None]  # not a list: the whole row
    assert sum(1 for s in skipped if s["source"] == "conversation") == 4
    assert stats["skipped_records"] == len(skipped) and all(s["reason"] for s in skipped)
    assert all(len(s["reason"]) < 300 for s in skipped)  # reasons, not words

    rows = [json.loads(text) for name in ("train.jsonl", "eval.jsonl") for text in (tmp_path / "ds" / name).open()]
    texts = {r["messages"][-1]["content"] for r in rows}
    assert {"Yes, in 5 to 8 days.", "We don't price match; sorry.", "Hello!", "You're welcome"} <= texts
    assert all(isinstance(s, str) for s in stats["support_strategies"]) and "planted" in stats["support_strategies"]
    assert json.loads((tmp_path / "ds" / "stats.json").read_text())["skipped_records"] == len(skipped)

    # and the next build, and the pipeline's, go on working
    again = datasets.build_datasets(shop, tmp_path / "ds2")
    assert again["skipped_records"] == len(skipped) - 1  # all but the CLI file's record
