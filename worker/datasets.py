"""Stage `build_datasets`: chat-format training sets from a shop's own orders, catalog and policies.

Recommendations: multi-item orders become "Customer viewing: X. Cart: Y." → the rest of the basket, filtered
for coherence (product-type and item co-purchase lift), de-duplicated and balanced so best-sellers do not
swamp the long tail. The newest orders are held out by time and never reach training.
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
import statistics
import time
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path

from sqlalchemy import select

from core import assistant
from core.history import Item, load_baskets, load_catalog, split_by_time
from core.inputs import BadInput
from core.models import Conversation, Product, RecommendationRating, Shop, db
from core.prompts import (
    CANDIDATES,
    MAX_PICKS,
    RECOMMEND_SYSTEM,
    format_answer,
    reason_for,
    recommendation_prompt,
    support_prompt,
)
from core.recommendations import Shelf, load_shelf
from core.recommenders import CoPurchase, Recommender, serving_retrieval

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

def candidates_for(stats: PairStats, viewing: Item, cart: list[Item], answer: list[Item], rng: random.Random,
                   retrieve: Recommender | None = None, size: int = CANDIDATES) -> list[Item]:
    """The answer mixed with what retrieval would also offer (`retrieve`, the recommender that finds the
    candidates when serving; by default co-purchase partners), shuffled: the model learns to choose."""
    taken = {viewing.id, *(c.id for c in cart), *(a.id for a in answer)}
    found = retrieve([viewing.id, *(c.id for c in cart)], size * 2) if retrieve else \
        stats.partners(viewing.id, size * 2, min_count=1)
    neighbours = [p for p in found if p not in taken]
    pool = list(answer) + [stats.catalog[p] for p in neighbours[:max(size - len(answer), 0)]]
    while len(pool) < size:  # a thin history: pad with random catalog items
        extra = stats.catalog[rng.choice(list(stats.catalog))]
        if extra.id not in taken:
            taken.add(extra.id)
            pool.append(extra)
    rng.shuffle(pool)
    return pool


def _example(system: str, viewing: Item, cart: list[Item], answer: list[Item], candidates: list[Item],
             **meta) -> dict:
    prompt = recommendation_prompt(viewing.title, [c.title for c in cart], [c.title for c in candidates])
    return {
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": format_answer([(a.title, reason_for(a)) for a in answer])},
        ],
        "kind": "recommendation", "viewing": viewing.id, "answer": [a.id for a in answer], **meta,
    }


def basket_examples(baskets: list[list[int]], stats: PairStats, catalog: dict[int, Item], system: str,
                    rng: random.Random, *, per_basket: int = 3, filter_noise: bool = True,
                    retrieve: Recommender | None = None, candidates: int = CANDIDATES) -> list[dict]:
    examples = []
    for basket in baskets:
        if len(basket) < 3:
            continue
        for viewing in rng.sample(basket, min(per_basket, len(basket))):
            rest = [p for p in basket if p != viewing]
            rng.shuffle(rest)
            cart = rest[:rng.randint(1, len(rest) - 1)]
            answer = [p for p in rest if p not in cart]
            if filter_noise:
                answer = [p for p in answer if stats.coherent(viewing, p)]
            answer = sorted(answer, key=lambda p: -stats.lift(viewing, p))[:MAX_PICKS]
            if answer:
                items = [catalog[a] for a in answer]
                cart_items = [catalog[c] for c in cart]
                pool = candidates_for(stats, catalog[viewing], cart_items, items, rng, retrieve, candidates)
                examples.append(_example(system, catalog[viewing], cart_items, items, pool, source="basket"))
    return examples


def copurchase_examples(stats: PairStats, catalog: dict[int, Item], system: str, rng: random.Random, *,
                        min_count: int = 3) -> list[dict]:
    """"Viewing X" with an empty cart → X's strongest coherent partners."""
    examples = []
    for product, count in sorted(stats.items.items()):
        if count < min_count:
            continue
        partners = stats.partners(product, 3)
        if partners:
            answer = [catalog[p] for p in partners]
            candidates = candidates_for(stats, catalog[product], [], answer, rng)
            examples.append(_example(system, catalog[product], [], answer, candidates, source="copurchase"))
    return examples


def rated_examples(shop: Shop, stats: PairStats, catalog: dict[int, Item], system: str,
                   rng: random.Random) -> list[dict]:
    """The merchant's ratings as teaching: viewing X → the products they rated 3, then 2, chosen among candidates
    that hold the ones they rated 1 (so the model learns to pass over those)."""
    rated: dict[int, dict[int, int]] = defaultdict(dict)
    for viewed, product, rating in db.session.execute(select(
            RecommendationRating.viewed_product_id, RecommendationRating.product_id, RecommendationRating.rating)
            .where(RecommendationRating.shop_id == shop.id).order_by(RecommendationRating.created_at)):
        if viewed in catalog and product in catalog:
            rated[viewed][product] = rating
    examples = []
    for viewed, ratings in sorted(rated.items()):
        answer = [catalog[p] for p, r in sorted(ratings.items(), key=lambda pr: (-pr[1], pr[0])) if r >= 2]
        if not answer:
            continue
        answer = answer[:MAX_PICKS]
        unrelated = [catalog[p] for p, r in sorted(ratings.items()) if r == 1][:CANDIDATES - len(answer)]
        candidates = candidates_for(stats, catalog[viewed], [], answer + unrelated, rng)
        examples.append(_example(system, catalog[viewed], [], answer, candidates, source="ratings"))
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

POLICY_QUESTIONS = {
    "shipping": ["How long does shipping take?", "Do you ship to Canada?", "What does delivery cost?",
                 "Is there free shipping?"],
    "returns": ["Can I return something?", "What is your return policy?", "How do I send an item back?",
                "i want a refund"],
    "invoices": ["Can I get an invoice for my order?", "I need a VAT invoice", "Where do I find my receipt?"],
    "payment": ["Which payment methods do you take?", "Can I pay with PayPal?", "Do you accept gift cards?"],
    "discounts": ["Do you have any discounts?", "Is there a student discount?", "Give me a 20% discount code"],
}
OTHER_QUESTIONS = ["Is this the lowest price anywhere?", "Can you beat the price I saw elsewhere?",
                   "I'm not sure if I should buy it", "What if it doesn't fit?", "Hello"]
STOCK_QUESTIONS = ["Do you have the {title} in {variant}?", "Is the {title} ({variant}) in stock?",
                   "can i still get {title} in {variant}", "How many {title} in {variant} are left?"]
PRICE_QUESTIONS = ["How much is the {title}?", "What does the {title} cost?", "price of {title}?"]
PAIR_QUESTIONS = ["What goes well with the {title}?", "What else do I need with the {title}?"]
MAX_PAIR_EXAMPLES = 20  # each asks the recommender (the live model, when there is one)


def support_example(shop: Shop, facts: list[str], question: str, answer: str, strategy: str, **extra) -> dict:
    """A chat example in exactly the shape the assistant asks the model (`assistant.respond`)."""
    return {"messages": [{"role": "system", "content": assistant.system_prompt(shop)},
                         {"role": "user", "content": support_prompt(facts, question)},
                         {"role": "assistant", "content": answer}], "kind": "support", "strategy": strategy, **extra}


def support_examples(shop: Shop, shelf: Shelf, rng: random.Random, limit: int) -> list[dict]:
    """Shoppers' questions answered by the assistant's own composer from the facts serving looks up: the model
    learns to say what the checks let through, in the words the store uses."""
    questions: list[tuple[str, Product | None]] = [(q, None) for qs in POLICY_QUESTIONS.values() for q in qs]
    questions += [(q, None) for q in OTHER_QUESTIONS]
    products = db.session.scalars(select(Product).where(Product.shop_id == shop.id, Product.status == "ACTIVE")
                                  .order_by(Product.id)).all()
    rng.shuffle(products)
    for number, product in enumerate(products):
        variant = rng.choice(product.variants) if product.variants else None
        if variant is not None:
            questions.append((rng.choice(STOCK_QUESTIONS).format(title=product.title, variant=variant.title), None))
        if rng.random() < 0.3:
            questions.append((rng.choice(PRICE_QUESTIONS).format(title=product.title), None))
        if rng.random() < 0.2:
            questions.append((rng.choice(["Is this in stock?", "How much is this?"]), product))
        if number < MAX_PAIR_EXAMPLES:
            questions.append((rng.choice(PAIR_QUESTIONS).format(title=product.title), None))
        if len(questions) >= limit:
            break
    examples = []
    for question, viewing in questions[:limit]:
        reply, facts = assistant.compose(assistant.Question(shop, question, shelf, viewing))
        if reply.wordable:
            examples.append(support_example(shop, facts.lines, question, reply.text, reply.strategy))
    return examples


def stored_conversations(shop: Shop) -> list[dict]:
    """What the assistant answered on the storefront, each turn with the facts it was answered from: the
    turns a model words, so never a customer's orders."""
    examples = []
    for talk in db.session.scalars(select(Conversation).where(Conversation.shop_id == shop.id)
                                   .order_by(Conversation.id)):
        for question, reply in zip(talk.messages, talk.messages[1:]):
            if question["role"] == "user" and reply["role"] == "assistant" and reply.get("wordable"):
                examples.append(support_example(shop, reply["facts"], question["content"], reply["content"],
                                                reply.get("strategy", "answer"), source="conversation"))
    return examples


def merchant_conversations(upload: str | Path, shop: Shop) -> list[dict]:
    """A merchant's past conversations: CSV with question,answer[,strategy] or JSONL with messages."""
    text = Path(upload).read_text(encoding="utf-8")
    examples = []
    if str(upload).endswith(".csv"):
        for row in csv.DictReader(io.StringIO(text)):
            if row.get("question") and row.get("answer"):
                examples.append(support_example(shop, [], row["question"].strip(), row["answer"].strip(),
                                                (row.get("strategy") or "merchant").strip()))
    else:
        system = assistant.system_prompt(shop)
        for line in text.splitlines():
            if line.strip():
                record = json.loads(line)
                messages = [m for m in record["messages"] if m["role"] != "system"]
                examples.append({"messages": [{"role": "system", "content": system}, *messages], "kind": "support",
                                 "strategy": record.get("strategy", "merchant")})
    return examples


MAX_UPLOAD_BYTES = 2 * 1024 * 1024
MAX_UPLOADS = 50


def uploads_dir(shop: Shop) -> Path:
    """Past conversations the merchant added from the admin: every later training run learns from them."""
    from .pipeline import artifacts_root

    return artifacts_root() / shop.domain / "conversations"


def add_conversations(shop: Shop, data: bytes, kind: str) -> int:
    """Check an upload (`csv`: question,answer[,strategy]; `jsonl`: {"messages": [...]} a line) and keep it for
    training; returns how many examples it holds. BadInput says what is wrong, and nothing is kept."""
    if kind not in ("csv", "jsonl"):
        raise BadInput("format must be csv or jsonl.")
    if not data or len(data) > MAX_UPLOAD_BYTES:
        raise BadInput(f"Send a file of 1 byte to {MAX_UPLOAD_BYTES // 1024 // 1024} MB.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput("The file is not UTF-8 text.") from None
    if kind == "jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise BadInput(f"line {number} is not JSON.") from None
            messages = record.get("messages") if isinstance(record, dict) else None
            if not isinstance(messages, list) or not messages or not all(
                    isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                    and isinstance(m.get("content"), str) for m in messages):
                raise BadInput(f'line {number}: expected {{"messages": [{{"role", "content"}}, ...]}}.')
    elif not {"question", "answer"} <= set(next(csv.reader(io.StringIO(text)), [])):
        raise BadInput("The CSV needs a header with question and answer (and optionally strategy).")
    folder = uploads_dir(shop)
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.iterdir())) >= MAX_UPLOADS:
        raise BadInput(f"The store already keeps {MAX_UPLOADS} conversation files; that is the most it takes.")
    path = folder / f"{time.time_ns()}.{kind}"
    path.write_bytes(data)
    examples = len(merchant_conversations(path, shop))
    if not examples:
        path.unlink()
        raise BadInput("The file holds no conversations.")
    return examples


# --- The stage --------------------------------------------------------------------------------------------

def build_datasets(shop: Shop, out_dir: Path, *, seed: int = 0, conversations: str | Path | None = None) -> dict:
    """Write train.jsonl, eval.jsonl and stats.json under out_dir; return the stats (with a version hash)."""
    rng = random.Random(seed)
    catalog = load_catalog(shop.id)
    baskets = load_baskets(shop.id, catalog)
    train_baskets, eval_baskets = split_by_time(baskets)
    train_items = [b.products for b in train_baskets]
    stats = PairStats(train_items, catalog)
    retrieve = serving_retrieval(train_baskets, catalog)  # candidates as the storefront finds them
    system = RECOMMEND_SYSTEM.format(shop=shop.domain)

    recommendations = dedupe_and_balance(
        basket_examples(train_items, stats, catalog, system, rng, retrieve=retrieve)
        + copurchase_examples(stats, catalog, system, rng), rng)
    rated = rated_examples(shop, stats, catalog, system, rng)  # few and hand-made: never capped
    recommendations += rated
    held_out = basket_examples([b.products for b in eval_baskets], stats, catalog, system, rng, per_basket=1,
                               retrieve=retrieve)
    support = support_examples(shop, load_shelf(shop), rng, limit=max(len(recommendations) // 4, 50))
    support += stored_conversations(shop)
    for upload in [*sorted(uploads_dir(shop).glob("*")), *([conversations] if conversations else [])]:
        support += merchant_conversations(upload, shop)
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
    }
    if len(recommendations) < MIN_EXAMPLES_WARNING:
        result["warning"] = (f"only {len(recommendations)} recommendation examples (aim for 2,000-5,000): "
                             "the model will learn little; sync more orders or wait for more sales")
        log.warning(result["warning"])
    (out_dir / "stats.json").write_text(json.dumps(result, indent=2))
    return result
