"""Stage `build_datasets`: chat-format training sets from a shop's own orders, catalog and policies.

Recommendations: multi-item orders become "Customer viewing: X. Cart: Y." with retrieval's candidates under
letters → the letter of a product the order also holds (coherent by product-type and item co-purchase lift),
de-duplicated and balanced so best-sellers do not swamp the long tail. The newest orders are held out by time
and never reach training.
Support: shoppers' questions answered by the assistant's composer from the facts serving looks up, and the
conversations the assistant had on the storefront, each labelled with its strategy.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import random
import re
import shutil
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path

from sqlalchemy import select

from core.assistant import replies, understanding
from core.inputs import BadInput, load_json, plain_text, text_lines, utf8_text
from core.llm.prompts import (
    CANDIDATES,
    LABELS,
    MAX_PICKS,
    RECOMMEND_SYSTEM,
    candidate_line,
    ranking_prompt,
    support_parts,
    support_prompt,
)
from core.recommendations.history import Item, load_baskets, load_catalog, split_by_time
from core.recommendations.recommenders import CoPurchase, Recommender
from core.recommendations.serving import Shelf, load_shelf, period_retrieval
from core.storage.artifacts import artifacts_root
from core.storage.models import Conversation, Product, RecommendationRating, Shop, TrainingRun, db

log = logging.getLogger(__name__)

MIN_EXAMPLES_WARNING = 500


# --- Co-purchase statistics ---------------------------------------------------------------------------

class PairStats(CoPurchase):
    """Co-purchase statistics with product-type co-occurrence, to keep incoherent pairs out of the examples."""

    def __init__(self, baskets: list[list[int]], catalog: dict[int, Item]):
        super().__init__(baskets)
        self.types: Counter = Counter()
        self.type_pairs: Counter = Counter()
        for basket in baskets:
            kinds = {catalog[i].product_type for i in basket}
            self.types.update(kinds)
            self.type_pairs.update(frozenset(p) for p in combinations(sorted(kinds), 2))
        self.catalog = catalog

    def type_lift(self, a: int, b: int) -> float:
        ta, tb = self.catalog[a].product_type, self.catalog[b].product_type
        if ta == tb:
            return 1.0  # same department (socks with boots' socks) is coherent by definition
        together = self.type_pairs[frozenset((ta, tb))]
        return together * self.n / (self.types[ta] * self.types[tb]) if together else 0.0

    def coherent(self, viewing: int, item: int) -> bool:
        return item != viewing and self.type_lift(viewing, item) >= 1.0 and self.lift(viewing, item) >= 1.0

    def partners(self, product: int, k: int, min_count: int = 2) -> list[int]:
        candidates = [other for other, count in self.bought_with(product).items()
                      if count >= min_count and self.coherent(product, other)]
        return sorted(candidates, key=lambda c: (-self.lift(product, c), c))[:k]


# --- Recommendation examples -----------------------------------------------------------------------------

def candidates_for(stats: PairStats, viewing: Item, cart: list[Item], rng: random.Random,
                   retrieve: Recommender | None = None, size: int = CANDIDATES,
                   keep: list[Item] = ()) -> list[Item]:
    """The candidates as the storefront shows them to the model: retrieval's top `size` for the basket, in
    retrieval's order (`retrieve`, the recommender that serves; by default co-purchase partners). `keep`: products
    that must be among them (the merchant's rated ones), each put in a random place when retrieval missed it."""
    taken = {viewing.id, *(c.id for c in cart)}
    found = retrieve([viewing.id, *(c.id for c in cart)], size * 2) if retrieve else \
        stats.partners(viewing.id, size * 2, min_count=1)
    pool = [stats.catalog[p] for p in found if p not in taken][:size]
    for item in keep:
        if item not in pool:
            pool.insert(rng.randrange(len(pool) + 1), item)
    while len(pool) > size:  # drop the lowest-ranked that need not stay
        pool.remove(next(p for p in reversed(pool) if p not in keep))
    while len(pool) < size and len(pool) < len(stats.catalog) - len(taken):  # a thin history: pad at random
        extra = stats.catalog[rng.choice(list(stats.catalog))]
        if extra.id not in taken and extra not in pool:
            pool.append(extra)
    return pool


def _example(viewing: Item, cart: list[Item], answer: Item, candidates: list[Item], **meta) -> dict:
    """A ranking example: the candidates under their letters, and the letter of the product the order holds."""
    prompt = ranking_prompt(viewing.title, [c.title for c in cart],
                            [candidate_line(c.title, c.product_type) for c in candidates])
    return {
        "messages": [
            {"role": "system", "content": RECOMMEND_SYSTEM},
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": LABELS[candidates.index(answer)]},
        ],
        "kind": "recommendation", "viewing": viewing.id, "answer": [answer.id],
        "candidates": [c.id for c in candidates], **meta,
    }


def basket_examples(baskets: list[list[int]], stats: PairStats, catalog: dict[int, Item], rng: random.Random,
                    *, per_basket: int = 3, filter_noise: bool = True,
                    retrieve: Recommender | None = None, candidates: int = CANDIDATES) -> list[dict]:
    """Up to `per_basket` views of each order of three products or more: one product viewed, some in the cart,
    and among the candidates retrieval finds for them, one of the rest of the order (at random) as the answer.
    A view whose rest retrieval did not find teaches nothing about ranking and is left out (as LlamaRec does)."""
    examples = []
    for basket in baskets:
        if len(basket) < 3:
            continue
        for viewing in rng.sample(basket, min(per_basket, len(basket))):
            rest = [p for p in basket if p != viewing]
            rng.shuffle(rest)
            cart = rest[:rng.randint(1, len(rest) - 1)]
            answer = [p for p in rest if p not in cart and (not filter_noise or stats.coherent(viewing, p))]
            if not answer:
                continue
            cart_items = [catalog[c] for c in cart]
            pool = candidates_for(stats, catalog[viewing], cart_items, rng, retrieve, candidates)
            found = [item for item in pool if item.id in answer]
            if found:
                examples.append(_example(catalog[viewing], cart_items, rng.choice(found), pool,
                                         source="basket"))
    return examples


def copurchase_examples(stats: PairStats, catalog: dict[int, Item], rng: random.Random, *,
                        min_count: int = 3, retrieve: Recommender | None = None) -> list[dict]:
    """"Viewing X" with an empty cart → the strongest of X's coherent partners that retrieval finds."""
    examples = []
    for product, count in sorted(stats.items.items()):
        if count < min_count:
            continue
        partners = stats.partners(product, 3)
        if partners:
            pool = candidates_for(stats, catalog[product], [], rng, retrieve)
            found = [item for p in partners for item in pool if item.id == p]
            if found:
                examples.append(_example(catalog[product], [], found[0], pool, source="copurchase"))
    return examples


def rated_examples(shop: Shop, stats: PairStats, catalog: dict[int, Item], rng: random.Random,
                   retrieve: Recommender | None = None) -> list[dict]:
    """The merchant's ratings as teaching: viewing X → each product they rated 3 or 2, among candidates that hold
    the ones they rated 1 (so the model learns to pass over those)."""
    rated: dict[int, dict[int, int]] = defaultdict(dict)
    for viewed, product, rating in db.session.execute(select(
            RecommendationRating.viewed_product_id, RecommendationRating.product_id, RecommendationRating.rating)
            .where(RecommendationRating.shop_id == shop.id).order_by(RecommendationRating.created_at)):
        if viewed in catalog and product in catalog:
            rated[viewed][product] = rating
    examples = []
    for viewed, ratings in sorted(rated.items()):
        good = [catalog[p] for p, r in sorted(ratings.items(), key=lambda pr: (-pr[1], pr[0])) if r >= 2]
        unrelated = [catalog[p] for p, r in sorted(ratings.items()) if r == 1][:CANDIDATES - 1]
        for answer in good[:MAX_PICKS]:
            pool = candidates_for(stats, catalog[viewed], [], rng, retrieve,
                                  keep=[answer, *unrelated], size=CANDIDATES)
            pool = [p for p in pool if p is answer or p not in good]  # one right answer among the candidates
            examples.append(_example(catalog[viewed], [], answer, pool, source="ratings"))
    return examples


def dedupe_and_balance(examples: list[dict], rng: random.Random) -> list[dict]:
    """Drop repeats; cap examples per viewed product so best-sellers do not swamp the long tail."""
    unique = {}
    for example in examples:
        key = (example["messages"][1]["content"], example["messages"][2]["content"])
        unique.setdefault(key, example)
    by_viewing: dict[int, list[dict]] = defaultdict(list)
    for example in unique.values():
        by_viewing[example["viewing"]].append(example)
    cap = max(8, int(2 * statistics.median(len(v) for v in by_viewing.values()))) if by_viewing else 0
    balanced = []
    for viewing in sorted(by_viewing):
        group = by_viewing[viewing]
        rng.shuffle(group)
        balanced.extend(group[:cap])
    rng.shuffle(balanced)
    return balanced


# --- Support examples ----------------------------------------------------------------------------------

STOCK_QUESTIONS = ["Do you have the {title} in {variant}?", "Is the {title} ({variant}) in stock?",
                   "can i still get {title} in {variant}", "How many {title} in {variant} are left?"]
PRICE_QUESTIONS = ["How much is the {title}?", "What does the {title} cost?", "price of {title}?"]
PAIR_QUESTIONS = ["What goes well with the {title}?", "What else do I need with the {title}?"]
MAX_PAIR_EXAMPLES = 20  # each asks the recommender (the live model, when there is one)
# One support example to this many recommendation ones: 2 was tried on the demo store and its model said it was
# unsure more often (handoff precision 0.815 on the gate's held-out questions, refused), 4 was not
RECOMMENDATIONS_PER_SUPPORT_EXAMPLE = 4
SOLD_OUT_SHARE = 0.5  # of stock questions on a product with a sold-out variant: that variant, so "no" is learned


def support_example(shop: Shop, facts: list[str], question: str, answer: str, strategy: str, **extra) -> dict:
    """A chat example in exactly the shape the assistant asks the model (`replies.respond`)."""
    return {"messages": [{"role": "system", "content": replies.system_prompt(shop)},
                         {"role": "user", "content": support_prompt(facts, question)},
                         {"role": "assistant", "content": answer}], "kind": "support", "strategy": strategy, **extra}


def support_examples(shop: Shop, shelf: Shelf, rng: random.Random, limit: int) -> list[dict]:
    """Shoppers' questions answered by the assistant's own composer from the facts serving looks up: the model
    learns to say what the checks let through, in the words the store uses. Half are about the store's own
    products (stock by variant, a sold-out one as often as not, and price); half are the question reader's
    phrasing families (core/assistant/understanding.py) as shoppers type them, about the product in view where they
    name one, so the model sees every kind of question in many wordings."""
    products = db.session.scalars(select(Product).where(Product.shop_id == shop.id, Product.on_storefront)
                                  .order_by(Product.id)).all()
    rng.shuffle(products)
    about_products: list[tuple[str, Product | None]] = []
    for number, product in enumerate(products):
        sold_out = [v for v in product.variants if not replies.in_stock(v)]
        variant = (rng.choice(sold_out) if sold_out and rng.random() < SOLD_OUT_SHARE
                   else rng.choice(product.variants) if product.variants else None)
        if variant is not None:
            about_products.append((rng.choice(STOCK_QUESTIONS).format(title=product.title, variant=variant.title),
                                   None))
        if rng.random() < 0.3:
            about_products.append((rng.choice(PRICE_QUESTIONS).format(title=product.title), None))
        if number < MAX_PAIR_EXAMPLES:
            about_products.append((rng.choice(PAIR_QUESTIONS).format(title=product.title), None))
    in_view = [p for p in products if p.variants] or [None]
    about_shop: list[tuple[str, Product | None]] = []
    for topic, by_family in understanding.QUESTIONS.items():
        for template in (t for templates in by_family.values() for t in templates):
            viewing = rng.choice(in_view)
            named = rng.choice(["this", "it", viewing.title]) if viewing is not None else "it"
            if topic != "pair":  # what goes with a product: the product questions ask it, a few times only
                about_shop.append((understanding.written_as(template.replace("{p}", named), rng), viewing))
    rng.shuffle(about_shop)
    products_asked = min(len(about_products), limit // 2)
    questions = about_products[:products_asked] + about_shop[:limit - products_asked]
    rng.shuffle(questions)
    examples = []
    for question, viewing in questions[:limit]:
        reply, facts = replies.compose(replies.Question(shop, question, shelf, viewing))
        if reply.wordable:
            examples.append(support_example(shop, facts.lines, question, reply.text, reply.strategy))
    return examples


def _asked(question: str) -> str:
    """A shopper's question as a training example's user turn holds it (`support_prompt` normalises it)."""
    return support_parts(support_prompt([], question))[1]


def stored_conversations(shop: Shop, skipped: list[dict] | None = None) -> list[dict]:
    """What the assistant answered on the storefront, each turn with the facts it was answered from: the
    turns a model words, so never a customer's orders. Every turn is checked as an upload is (rows written by an
    older version can hold anything): one that breaks the schema is left out and described in `skipped`. Each
    example names its conversation (`conversation`: the row's id), so erasing a customer finds the dataset files
    that hold their words (`forget_conversations`)."""
    skips = skipped if skipped is not None else []
    examples = []
    for talk in db.session.scalars(select(Conversation).where(Conversation.shop_id == shop.id)
                                   .order_by(Conversation.id)):
        messages = talk.messages
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            skips.append({"source": "conversation", "conversation": talk.id, "turn": None,
                          "reason": "its messages are not a list of objects"})
            continue
        for turn, (question, reply) in enumerate(zip(messages, messages[1:]), 1):
            if question.get("role") != "user" or reply.get("role") != "assistant" or reply.get("wordable") is not True:
                continue
            try:
                example = support_example(
                    shop, _facts(reply.get("facts")),
                    _text(question.get("content"), "the question", MAX_QUESTION_CHARS),
                    _text(reply.get("content"), "the reply", MAX_CONTENT_CHARS),
                    _strategy(reply.get("strategy"), "answer"), source="conversation", conversation=talk.id)
            except BadInput as exc:
                skips.append({"source": "conversation", "conversation": talk.id, "turn": turn, "reason": str(exc)})
                continue
            examples.append(example)
    return examples


# --- The merchant's conversations: one schema for uploads and builds ---------------------------------------
#
# Every conversation that reaches a training set passes the same checks: on upload (a file that breaks them is
# refused whole, a 400 naming the line and the reason, and nothing is kept) and again, record by record, in every
# build (files kept before these checks existed, or given to `pairwell dataset --conversations`, can hold
# anything; a bad record is left out and counted in the dataset's stats, never the end of the build).

MAX_UPLOAD_BYTES = 2 * 1024 * 1024
MAX_UPLOADS = 50
MAX_BUILD_FILE_BYTES = 64 * 1024 * 1024  # a file given to `pairwell dataset --conversations`
MAX_LINES = 20_000  # physical lines of an upload (a quoted CSV answer may span several)
MAX_RECORDS = 10_000  # conversations in an upload
MAX_LINE_CHARS = 64_000
MAX_RECORD_DEPTH = 3  # {"messages": [{"role": ..., "content": ...}]}
MAX_MESSAGES = 40  # in one JSONL conversation
MAX_QUESTION_CHARS = replies.MAX_MESSAGE_CHARS  # a CSV question: what the chat takes from a shopper
MAX_CONTENT_CHARS = 4_000  # a CSV answer, a JSONL message's content, a stored reply
MAX_FACTS = 100  # a stored turn's facts ...
MAX_FACT_CHARS = 4_000  # ... each at most this long
MAX_SKIPS_LISTED = 100  # skipped records described in a dataset's stats (all are counted)
CSV_COLUMNS = ("question", "answer", "strategy")
RECORD_KEYS = ("messages", "strategy")
MESSAGE_KEYS = ("role", "content")
ROLES = ("user", "assistant", "system")
STRATEGY = re.compile(r"[a-z][a-z0-9_-]{0,31}")
DEFAULT_STRATEGY = "merchant"
_TEMPLATE_TOKEN = re.compile(r"<\|[^|\n]{0,40}\|>")  # <|im_start|>, <|im_end|>: would split a training example

Record = tuple[list[dict], str]  # a conversation's user and assistant messages (the assistant's last), its strategy


def _text(value: object, what: str, at_most: int) -> str:
    """A message: a non-empty string of at most `at_most` characters, valid Unicode, no control characters but
    tab and newline, no chat-template token."""
    if isinstance(value, str):
        value = value.replace("\r\n", "\n")
    text = plain_text(value, what, at_most)
    if _TEMPLATE_TOKEN.search(text):
        raise BadInput(f"{what} holds a chat-template token such as <|im_end|>.")
    return text


def _facts(value: object) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_FACTS or not all(
            isinstance(fact, str) and len(fact) <= MAX_FACT_CHARS and not _TEMPLATE_TOKEN.search(fact)
            for fact in value):
        raise BadInput(f"the facts must be a list of at most {MAX_FACTS} texts of at most {MAX_FACT_CHARS} "
                       "characters.")
    try:
        "".join(value).encode("utf-8")
    except UnicodeEncodeError:
        raise BadInput("the facts are not valid Unicode text.") from None
    return value


def _strategy(value: object, default: str = DEFAULT_STRATEGY) -> str:
    """A label for the example: 1-32 ASCII letters, digits, _ or -, starting with a letter (absent: `default`)."""
    if value is None or isinstance(value, str) and not value.strip():
        return default
    if not isinstance(value, str) or not STRATEGY.fullmatch(value.strip().lower()):
        raise BadInput("strategy must be 1 to 32 letters, digits, _ or - starting with a letter (e.g. answer).")
    return value.strip().lower()


def _jsonl_record(line: str) -> Record:
    record = load_json(line, "the line", max_depth=MAX_RECORD_DEPTH)
    if not isinstance(record, dict):
        raise BadInput('expected a JSON object: {"messages": [{"role": "user", "content": "..."}, ...]}.')
    unknown = [key for key in record if key not in RECORD_KEYS]
    if unknown:
        raise BadInput(f"unknown key {unknown[0][:40]!r}: a line holds messages and optionally strategy.")
    messages = record.get("messages")
    if not isinstance(messages, list) or not 1 <= len(messages) <= MAX_MESSAGES:
        raise BadInput(f"messages must be a list of 1 to {MAX_MESSAGES} messages.")
    kept = []
    for number, message in enumerate(messages):
        what = f"messages[{number}]"
        if not isinstance(message, dict):
            raise BadInput(f'{what} must be an object: {{"role": "user", "content": "..."}}.')
        unknown = [key for key in message if key not in MESSAGE_KEYS]
        if unknown:
            raise BadInput(f"{what} has an unknown key {unknown[0][:40]!r}: a message holds role and content.")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise BadInput(f"{what}.role must be one of {', '.join(ROLES)}.")
        content = _text(message.get("content"), f"{what}.content", MAX_CONTENT_CHARS)
        if role != "system":  # the shop's own system prompt replaces the merchant's
            kept.append({"role": role, "content": content})
    if not any(m["role"] == "user" for m in kept) or kept[-1]["role"] != "assistant":
        raise BadInput("a conversation needs a user message and must end with the assistant's reply.")
    return kept, _strategy(record.get("strategy"))


def _csv_records(text: str) -> Iterator[tuple[int, Record | BadInput]]:
    # Fields larger than csv.field_size_limit() (128 KiB unless raised; it is process-wide, so it is left alone)
    # raise csv.Error, caught below; every field this schema takes is far smaller.
    reader = csv.reader(io.StringIO(text.replace("\r\n", "\n")), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        yield 1, BadInput(f"the header is not valid CSV ({exc}).")
        return
    columns = [column.strip().lower() for column in header or []]
    if "question" not in columns or "answer" not in columns:
        yield 1, BadInput("the first line must be a header naming the columns question and answer "
                          "(and optionally strategy).")
        return
    unknown = [column for column in columns if column not in CSV_COLUMNS]
    if unknown or len(set(columns)) != len(columns):
        yield 1, BadInput(f"the header names {unknown[0][:40]!r}: the columns are question, answer and optionally "
                          "strategy." if unknown else "the header names a column twice.")
        return
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, BadInput(f"not valid CSV ({exc}); the rest of the file cannot be read.")
            return
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(columns):
            yield start, BadInput(f"{len(row)} fields where the header names {len(columns)}.")
            continue
        values = dict(zip(columns, row))
        try:
            record = ([{"role": "user", "content": _text(values["question"], "question", MAX_QUESTION_CHARS)},
                       {"role": "assistant", "content": _text(values["answer"], "answer", MAX_CONTENT_CHARS)}],
                      _strategy(values.get("strategy")))
        except BadInput as exc:
            yield start, exc
            continue
        yield start, record


def conversation_records(text: str, kind: str) -> Iterator[tuple[int, Record | BadInput]]:
    """Each record of a merchant's file with the line it starts on: the conversation, or BadInput saying how it
    breaks the schema. `csv`: a header naming question and answer, optionally strategy, and no other column; a
    question of at most MAX_QUESTION_CHARS, an answer of at most MAX_CONTENT_CHARS. `jsonl`: one object a line,
    {"messages": [{"role": "user" | "assistant" | "system", "content": "..."}, ...], "strategy"?: "..."}, nested
    no deeper than that, ending with the assistant's reply. A strategy is a short label (`STRATEGY`)."""
    if kind == "csv":
        yield from _csv_records(text)
        return
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): a JSON string may hold U+2028
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            if len(line) > MAX_LINE_CHARS:
                raise BadInput(f"longer than {MAX_LINE_CHARS} characters.")
            record = _jsonl_record(line)
        except BadInput as exc:
            yield number, exc
            continue
        yield number, record


def _merchant_example(shop: Shop, system: str, kind: str, messages: list[dict], strategy: str) -> dict:
    if kind == "csv":  # a question and its answer: asked as the assistant asks the model
        return support_example(shop, [], messages[0]["content"], messages[1]["content"], strategy, source="upload")
    return {"messages": [{"role": "system", "content": system}, *messages], "kind": "support", "strategy": strategy,
            "source": "upload"}


def merchant_conversations(upload: str | Path, shop: Shop, skipped: list[dict] | None = None) -> list[dict]:
    """A merchant's past conversations: CSV with question,answer[,strategy] or JSONL with messages. Each record
    is checked against the upload schema (`conversation_records`); one that breaks it is left out and described
    in `skipped` (a file that cannot be read at all, once)."""
    path = Path(upload)
    kind = "csv" if path.name.lower().endswith(".csv") else "jsonl"
    skips = skipped if skipped is not None else []

    def skip(line: int | None, reason: str) -> None:
        skips.append({"source": "upload", "file": path.name, "line": line, "reason": reason})

    try:
        if path.stat().st_size > MAX_BUILD_FILE_BYTES:
            skip(None, f"the file is larger than {MAX_BUILD_FILE_BYTES} bytes.")
            return []
        data = path.read_bytes()
    except OSError as exc:
        skip(None, f"the file cannot be read ({exc.strerror or type(exc).__name__}).")
        return []
    # Bytes that are not UTF-8 become lone surrogates, which the schema refuses: that record is skipped, not the file.
    text = data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    system = replies.system_prompt(shop)
    examples = []
    for number, record in conversation_records(text, kind):
        if isinstance(record, BadInput):
            skip(number, str(record))
        else:
            examples.append(_merchant_example(shop, system, kind, *record))
    return examples


def uploads_dir(shop: Shop) -> Path:
    """Past conversations the merchant added from the admin: every later training run learns from them."""
    return artifacts_root() / shop.domain / "conversations"


def upload_files(shop: Shop) -> list[Path]:
    """The merchant's kept uploads, oldest first (a file still being written is hidden until it is whole)."""
    folder = uploads_dir(shop)
    return sorted(p for p in folder.iterdir() if p.suffix in (".csv", ".jsonl") and not p.name.startswith(".")) \
        if folder.is_dir() else []


def add_conversations(shop: Shop, data: bytes, kind: str) -> int:
    """Check an upload (`csv`: question,answer[,strategy]; `jsonl`: {"messages": [...]} a line) and keep it for
    training; returns how many conversations it holds. A file breaking any check is refused whole: BadInput names
    the line and the reason, and nothing is kept."""
    if kind not in ("csv", "jsonl"):
        raise BadInput("format must be csv or jsonl.")
    text = utf8_text(data, "the file", MAX_UPLOAD_BYTES)
    text_lines(text, "the file", MAX_LINES, MAX_LINE_CHARS)
    records = 0
    for number, record in conversation_records(text, kind):
        if isinstance(record, BadInput):
            raise BadInput(f"line {number}: {record}")
        records += 1
        if records > MAX_RECORDS:
            raise BadInput(f"line {number}: the file holds more than {MAX_RECORDS} conversations; split it up.")
    if not records:
        raise BadInput("line 1: the file holds no conversations.")
    folder = uploads_dir(shop)
    folder.mkdir(parents=True, exist_ok=True)
    if len(upload_files(shop)) >= MAX_UPLOADS:
        raise BadInput(f"The store already keeps {MAX_UPLOADS} conversation files; that is the most it takes.")
    name = f"{time.time_ns()}.{kind}"
    partial = folder / f".{name}.partial"  # a build running meanwhile never reads half a file
    partial.write_bytes(data)
    partial.replace(folder / name)
    return records


def _holds_conversation(path: Path, ids: set[int], questions: set[str]) -> bool:
    """Whether a dataset file holds a turn of these conversations: by the `conversation` id each example carries,
    or (a file written before examples carried it) by the question of a stored conversation's example. A line
    that cannot be parsed counts if it holds one of the questions at all; a file that cannot be read counts."""
    quoted = [json.dumps(q, ensure_ascii=False)[1:-1] for q in questions if q]
    try:
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if "conversation" not in line:
                    continue
                try:
                    record = json.loads(line)
                except (ValueError, RecursionError):
                    if any(q in line for q in quoted):
                        return True
                    continue
                if not isinstance(record, dict):
                    continue
                talk = record.get("conversation")
                if isinstance(talk, int) and talk in ids:
                    return True
                if talk is None and record.get("source") == "conversation":
                    try:
                        asked = support_parts(record["messages"][1]["content"])[1]
                    except (KeyError, IndexError, TypeError, AttributeError):
                        continue
                    if asked in questions:
                        return True
    except OSError:
        return True
    return False


def forget_conversations(shop: Shop, talks: list[Conversation]) -> dict:
    """Erase these conversations (a customer's, on `customers/redact`) from the files made of them. Every dataset
    under the shop's artifacts that holds one of their turns is deleted, and with a run's dataset what training
    made from it but its GGUF models: `train/` (the LoRA adapter, the resumable checkpoint and its optimizer state)
    and `merged/` (the merged weights the export converts). A run still queued or running on such a dataset is
    asked to stop. The GGUF files stay (docs/security.md: the customer's words were never a training target). A
    later build makes new datasets without them."""
    root = artifacts_root() / shop.domain
    ids = {talk.id for talk in talks}
    questions = {_asked(m["content"]) for talk in talks if isinstance(talk.messages, list) for m in talk.messages
                 if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str)}
    result = {"dataset_files_deleted": 0, "runs_cleared": 0, "runs_cancelled": 0}
    if not ids or not root.is_dir():
        return result
    uploads = uploads_dir(shop)
    runs: set[Path] = set()
    for path in sorted(root.rglob("*.jsonl")):
        if uploads in path.parents or not path.is_file() or not _holds_conversation(path, ids, questions):
            continue
        if path.parent.name == "dataset" and path.parent.parent != root:
            runs.add(path.parent.parent)
        else:  # a dataset file outside a run's folder: that file
            path.unlink(missing_ok=True)
            result["dataset_files_deleted"] += 1
    for run in sorted(runs):
        result["dataset_files_deleted"] += sum(1 for p in (run / "dataset").rglob("*") if p.is_file())
        for derived in ("dataset", "train", "merged"):
            shutil.rmtree(run / derived, ignore_errors=True)
        result["runs_cleared"] += 1
    if runs:
        for row in db.session.scalars(select(TrainingRun).where(
                TrainingRun.shop_id == shop.id, TrainingRun.status.in_(("queued", "running")))):
            if row.artifact_dir and Path(row.artifact_dir) in runs:
                row.cancel_requested = True
                result["runs_cancelled"] += 1
    return result


# --- The stage --------------------------------------------------------------------------------------------

def build_datasets(shop: Shop, out_dir: Path, *, seed: int = 0, conversations: str | Path | None = None) -> dict:
    """Write train.jsonl, eval.jsonl and stats.json under out_dir; return the stats (with a version hash). A stored
    or uploaded conversation that breaks the schema is left out, never the end of the build: the stats count them
    (`skipped_records`) and say where and why (`skipped`: file and line, or conversation and turn; no words)."""
    rng = random.Random(seed)
    catalog = load_catalog(shop.id)
    baskets = load_baskets(shop.id, catalog)
    train_baskets, eval_baskets = split_by_time(baskets)
    train_items = [b.products for b in train_baskets]
    stats = PairStats(train_items, catalog)
    retrieve = period_retrieval(shop.id, train_baskets, catalog)  # candidates as the storefront finds them

    recommendations = dedupe_and_balance(
        basket_examples(train_items, stats, catalog, rng, retrieve=retrieve)
        + copurchase_examples(stats, catalog, rng, retrieve=retrieve), rng)
    rated = rated_examples(shop, stats, catalog, rng, retrieve)  # few and hand-made: never capped
    recommendations += rated
    held_out = basket_examples([b.products for b in eval_baskets], stats, catalog, rng, per_basket=1,
                               retrieve=retrieve)
    support = support_examples(shop, load_shelf(shop), rng,
                               limit=max(len(recommendations) // RECOMMENDATIONS_PER_SUPPORT_EXAMPLE, 50))
    skipped: list[dict] = []  # records that break the conversation schema: left out, counted, described
    support += stored_conversations(shop, skipped)
    for upload in [*upload_files(shop), *([conversations] if conversations else [])]:
        support += merchant_conversations(upload, shop, skipped)
    if skipped:
        log.warning("dataset of %s: %d conversation records skipped (see skipped in stats.json)", shop.domain,
                    len(skipped))
    rng.shuffle(support)
    support_eval, support_train = support[:len(support) // 10], support[len(support) // 10:]
    train = recommendations + support_train
    rng.shuffle(train)
    evaluation = held_out + support_eval

    popular = {p for p, _ in stats.items.most_common(max(len(stats.items) // 5, 1))}
    answered = [p for e in recommendations for p in e["answer"]]
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("eval.jsonl", evaluation)):
        with (out_dir / name).open("w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    digest = hashlib.sha256((out_dir / "train.jsonl").read_bytes() + (out_dir / "eval.jsonl").read_bytes())
    result = {
        "version": digest.hexdigest()[:12],
        "train_examples": len(train), "eval_examples": len(evaluation),
        "recommendation_examples": len(recommendations), "rated_examples": len(rated),
        "support_examples": len(support_train),
        "held_out_recommendation_examples": len(held_out),
        "orders": len(baskets), "train_orders": len(train_baskets), "eval_orders": len(eval_baskets),
        "split_at": eval_baskets[0].created_at.isoformat() if eval_baskets else None,
        "products": len(catalog), "products_covered": len({e["viewing"] for e in recommendations} | set(answered)),
        "long_tail_share": round(sum(p not in popular for p in answered) / max(len(answered), 1), 3),
        "support_strategies": dict(Counter(e["strategy"] for e in support)),
        "skipped_records": len(skipped), "skipped": skipped[:MAX_SKIPS_LISTED],
    }
    if len(recommendations) < MIN_EXAMPLES_WARNING:
        result["warning"] = (f"only {len(recommendations)} recommendation examples (aim for 2,000-5,000): "
                             "the model will learn little; sync more orders or wait for more sales")
        log.warning(result["warning"])
    (out_dir / "stats.json").write_text(json.dumps(result, indent=2))
    return result
