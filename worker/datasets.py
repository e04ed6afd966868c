"""Stage `build_datasets`: chat-format training sets from a shop's own orders, catalog and policies.

Recommendations: multi-item orders become "Customer viewing: X. Cart: Y." → the rest of the basket, filtered
for coherence (product-type and item co-purchase lift), de-duplicated and balanced so best-sellers do not
swamp the long tail. The newest orders are held out by time and never reach training.
Support: grounded question → answer pairs from policies and live product facts, labelled with a strategy.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import random
import statistics
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path

from sqlalchemy import select

from core.history import Item, load_baskets, load_catalog, split_by_time
from core.models import Product, Shop, Variant, db
from core.prompts import (
    CANDIDATES,
    MAX_PICKS,
    RECOMMEND_SYSTEM,
    SUPPORT_SYSTEM,
    format_answer,
    reason_for,
    recommendation_prompt,
)
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
        candidates = [other for other, count in self.pairs.get(product, {}).items()
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
                 "when will my order arrive", "Is there free shipping?"],
    "returns": ["Can I return something?", "What is your return policy?", "How do I send an item back?",
                "i want a refund", "How long do I have to return a jacket?"],
    "invoices": ["Can I get an invoice for my order?", "I need a VAT invoice", "Where do I find my receipt?"],
    "payment": ["Which payment methods do you take?", "Can I pay with PayPal?", "Do you accept gift cards?"],
    "discounts": ["Do you have any discounts?", "Is there a student discount?", "Can I stack discount codes?"],
}
UNKNOWN_QUESTIONS = ["Can you repair my stove from another brand?", "My order arrived damaged, what now?",
                     "I want to change the address on order #1042", "Can I speak to someone about a warranty claim?",
                     "Do you sponsor climbing events?", "Can you hold an item for me until Friday?"]
HAND_OFF = "I'm not sure about that one, so I'd rather not guess. Shall I connect you with a person from our team?"
STOCK_QUESTIONS = ["Do you have the {title} in {variant}?", "Is the {title} ({variant}) in stock?",
                   "can i still get {title} in {variant}", "How many {title} in {variant} are left?"]
PRICE_QUESTIONS = ["How much is the {title}?", "What does the {title} cost?", "price of {title}?"]


def _support(system: str, user: str, answer: str, strategy: str, facts: str = "") -> dict:
    content = f"Store facts: {facts}\nQuestion: {user}" if facts else user
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": content},
                         {"role": "assistant", "content": answer}], "kind": "support", "strategy": strategy}


def support_examples(shop_id: int, shop_name: str, policies: dict[str, str], rng: random.Random,
                     limit: int) -> list[dict]:
    system = SUPPORT_SYSTEM.format(shop=shop_name)
    examples = []
    for kind, questions in POLICY_QUESTIONS.items():
        policy = policies.get(kind)
        for question in questions:
            if policy:
                examples.append(_support(system, question, policy, "answer", facts=f"{kind} policy: {policy}"))
            else:
                examples.append(_support(system, question, HAND_OFF, "hand_off"))
    for question in UNKNOWN_QUESTIONS:
        examples.append(_support(system, question, HAND_OFF, "hand_off"))
    examples.append(_support(system, "Is this the lowest price anywhere?",
                             "I can't promise it's the lowest price anywhere, but I can tell you our current price "
                             "and what's in stock.", "reassure"))
    examples.append(_support(system, "Give me a 20% discount code",
                             "I can't create discount codes. Current offers are shown at checkout; I can connect "
                             "you with our team if you have a question about one.", "reassure"))

    products = db.session.scalars(select(Product).where(Product.shop_id == shop_id, Product.status == "ACTIVE")).all()
    by_type = defaultdict(list)
    for product in products:
        by_type[product.product_type].append(product)
    variants = db.session.scalars(select(Variant).where(Variant.shop_id == shop_id)).all()
    product_by_id = {p.id: p for p in products}
    rng.shuffle(variants)
    for variant in variants:
        product = product_by_id.get(variant.product_id)
        if product is None:
            continue
        fact = f"{product.title} ({variant.title}): {variant.inventory_quantity} in stock, ${variant.price}."
        question = rng.choice(STOCK_QUESTIONS).format(title=product.title, variant=variant.title)
        if variant.inventory_quantity > 0:
            answer = (f"Yes, the {product.title} in {variant.title} is in stock ({variant.inventory_quantity} left) "
                      f"at ${variant.price}.")
            examples.append(_support(system, question, answer, "answer", facts=fact))
        else:
            alternatives = [p for p in by_type[product.product_type] if p.id != product.id and p.total_inventory > 0]
            if alternatives:
                other = rng.choice(alternatives)
                fact += f" Similar in stock: {other.title}."
                answer = (f"The {product.title} in {variant.title} is sold out right now. The {other.title} is a "
                          f"similar {product.product_type.lower()} item that is in stock.")
                examples.append(_support(system, question, answer, "recommend_alternative", facts=fact))
        if rng.random() < 0.3:
            question = rng.choice(PRICE_QUESTIONS).format(title=product.title)
            examples.append(_support(system, question, f"The {product.title} is ${variant.price}.", "answer",
                                     facts=fact))
        if len(examples) >= limit:
            break
    return examples[:limit]


def merchant_conversations(upload: str | Path, shop_name: str) -> list[dict]:
    """A merchant's past conversations: CSV with question,answer[,strategy] or JSONL with messages."""
    text = Path(upload).read_text(encoding="utf-8")
    system = SUPPORT_SYSTEM.format(shop=shop_name)
    examples = []
    if str(upload).endswith(".csv"):
        for row in csv.DictReader(io.StringIO(text)):
            if row.get("question") and row.get("answer"):
                examples.append(_support(system, row["question"].strip(), row["answer"].strip(),
                                         (row.get("strategy") or "merchant").strip()))
    else:
        for line in text.splitlines():
            if line.strip():
                record = json.loads(line)
                messages = [m for m in record["messages"] if m["role"] != "system"]
                examples.append({"messages": [{"role": "system", "content": system}, *messages], "kind": "support",
                                 "strategy": record.get("strategy", "merchant")})
    return examples


# --- The stage --------------------------------------------------------------------------------------------

def build_datasets(shop: Shop, out_dir: Path, *, seed: int = 0, conversations: str | Path | None = None) -> dict:
    """Write train.jsonl, eval.jsonl and stats.json under out_dir; return the stats (with a version hash)."""
    rng = random.Random(seed)
    catalog = load_catalog(shop.id)
    baskets = load_baskets(shop.id, catalog)
    train_baskets, eval_baskets = split_by_time(baskets)
    train_items = [b for _, b in train_baskets]
    stats = PairStats(train_items, catalog)
    retrieve = serving_retrieval(stats, catalog)  # candidates as the storefront finds them
    system = RECOMMEND_SYSTEM.format(shop=shop.domain)

    recommendations = dedupe_and_balance(
        basket_examples(train_items, stats, catalog, system, rng, retrieve=retrieve)
        + copurchase_examples(stats, catalog, system, rng), rng)
    held_out = basket_examples([b for _, b in eval_baskets], stats, catalog, system, rng, per_basket=1,
                               retrieve=retrieve)
    support = support_examples(shop.id, shop.domain, shop.policies or {}, rng, limit=max(len(recommendations) // 4, 50))
    if conversations:
        support += merchant_conversations(conversations, shop.domain)
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
        "recommendation_examples": len(recommendations), "support_examples": len(support_train),
        "held_out_recommendation_examples": len(held_out),
        "orders": len(baskets), "train_orders": len(train_baskets), "eval_orders": len(eval_baskets),
        "split_at": eval_baskets[0][0].isoformat() if eval_baskets else None,
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
