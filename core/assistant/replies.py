"""The storefront support assistant: a shopper's question in, a reply built on live facts out.

Each question is read for what it asks (understanding.py: learned from how shoppers write), the facts it
needs are looked up first (the product in view or named, its variants' stock and price, its description, the
shop's policies and configured discount codes, the signed-in customer's own orders) and a reply is composed
from those facts alone: the sentences of a policy or description that answer the question, with a plain yes or
no where one is asked. The live model may then word the reply itself, from the same facts; its draft is
checked against them (`check`) and replaced by the composed reply when any check fails, or when the model is
away or slow. Each reply carries its strategy, as the seed's support data labels them: answer,
suggest_alternative, reassure, pair, handoff. Products shown are catalog products from the database, never
names the model wrote; numbers come from the facts, never from the model."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from urllib.parse import quote

import numpy as np
from flask import current_app
from rapidfuzz import fuzz, process
from sqlalchemy import select

from core import embeddings
from core.assistant import understanding
from core.claims import numbers, stems, supported
from core.inputs import BadInput
from core.llm.model_hosts import ModelUnavailable, host_for, model_ref
from core.llm.prompts import SUPPORT_REPLY_TOKENS, SUPPORT_SYSTEM, support_prompt
from core.recommendations import serving
from core.recommendations.serving import Shelf, offer_json
from core.storage.models import Conversation, ModelVersion, Order, Product, Shop, Variant, db, locked_shop, utcnow

log = logging.getLogger(__name__)

TONES = {"friendly": "Happy to help! ", "concise": "", "formal": "Thank you for your question. "}
DEFAULT_SETTINGS = {"enabled": True, "tone": "friendly", "handoff_contact": "", "discount_codes": []}
POLICY_KINDS = ("shipping", "returns", "invoices", "payment", "discounts")
MAX_MESSAGE_CHARS = 2000
KEEP_MESSAGES = 200  # a conversation's stored turns (the newest)
SupportChat = Callable[[list[dict]], str]  # messages → the model's reply text

FULFILLMENT = {"FULFILLED": "has shipped", "PARTIALLY_FULFILLED": "has partly shipped",
               "IN_PROGRESS": "is being prepared for shipping", "UNFULFILLED": "has not shipped yet",
               "ON_HOLD": "is on hold", "SCHEDULED": "is scheduled to ship", "RESTOCKED": "was returned"}


# --- Settings -----------------------------------------------------------------------------------------------

def settings(shop: Shop) -> dict:
    return {**DEFAULT_SETTINGS, **(shop.assistant or {})}


CODE = re.compile(r"^[A-Za-z0-9_-]{3,32}$")
EMAIL = re.compile(r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,190}\.[A-Za-z]{2,}$")
URL = re.compile(r"^https://[^\s<>\"']{3,490}$")


def validate_settings(body: object) -> dict:
    """The admin's PUT body as settings to store; BadInput says what is wrong."""
    if not isinstance(body, dict):
        raise BadInput('Send a JSON object, for example {"enabled": true, "tone": "friendly"}.')
    unknown = sorted(set(body) - set(DEFAULT_SETTINGS))
    if unknown:
        raise BadInput(f"Unknown settings {unknown}; expected some of {sorted(DEFAULT_SETTINGS)}.")
    if "enabled" in body and not isinstance(body["enabled"], bool):
        raise BadInput("enabled must be true or false.")
    if "tone" in body and body["tone"] not in TONES:
        raise BadInput(f"tone must be one of {sorted(TONES)}.")
    contact = body.get("handoff_contact", "")
    if not isinstance(contact, str) or (contact and not (EMAIL.match(contact) or URL.match(contact))):
        raise BadInput("handoff_contact must be an email address or an https:// URL.")
    codes = body.get("discount_codes", [])
    if not isinstance(codes, list) or len(codes) > 50 or not all(
            isinstance(c, dict) and set(c) <= {"code", "summary"} and isinstance(c.get("code"), str)
            and CODE.match(c["code"]) and isinstance(c.get("summary", ""), str) and len(c.get("summary", "")) <= 200
            for c in codes):
        raise BadInput('discount_codes must be a list of at most 50 {"code": "WELCOME10", "summary": "..."} '
                       "(codes: 3-32 letters, digits, - or _; summaries up to 200 characters).")
    return body


def handoff_url(shop: Shop, transcript: Sequence[dict]) -> str:
    """Where a shopper reaches a person: the merchant's email (the transcript as the mail's body), their
    contact URL, or the theme's contact page."""
    contact = settings(shop)["handoff_contact"]
    if EMAIL.match(contact or ""):
        lines = [f"{m['role']}: {m['content']}" for m in transcript][-12:]
        body = "\n".join(lines)[-1500:]
        return f"mailto:{contact}?subject={quote('Question from the store chat')}&body={quote(body)}"
    return contact or "/pages/contact"


# --- Facts ----------------------------------------------------------------------------------------------------

@dataclass
class Facts:
    """What the reply may say: the lines the model reads, and what the checks hold the reply to."""
    lines: list[str] = field(default_factory=list)
    focus: Product | None = None  # the product the question is about
    variant: Variant | None = None  # the variant it names
    products: list[int] = field(default_factory=list)  # sellable catalog products to show, in order
    codes: set[str] = field(default_factory=set)

    def add(self, line: str) -> None:
        if line not in self.lines:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return " ".join(self.lines)


def money(value: Decimal) -> str:
    return f"${value:,.2f}"


def named_products(shelf: Shelf, message: str, limit: int = 3) -> list[int]:
    """Catalog products the question names: whole titles first, then close spellings (fuzzy), then part of a
    title (`loosely_named`)."""
    lowered = message.lower()
    exact = sorted((p for p, item in shelf.catalog.items() if item.title.lower() in lowered),
                   key=lambda p: -len(shelf.catalog[p].title))
    if exact:
        return exact[:limit]
    titles = {p: item.title for p, item in shelf.catalog.items()}
    found = process.extract(message, titles, scorer=fuzz.token_set_ratio, limit=limit, score_cutoff=88)
    if not found:
        return loosely_named(shelf, message, limit)
    best = found[0][1]
    return [p for _, score, p in found if score >= best - 2]


def loosely_named(shelf: Shelf, message: str, limit: int = 3) -> list[int]:
    """Products named by part of their title ("the classic climbing shoes"): the message says what the product
    is (the title's last word) and one more of its words; the products whose rarest words it says win (ties:
    all of them, for the caller to narrow)."""
    said = serving.title_words_of(message)
    held = {product: sum(shelf.title_word_rarity[w] for w in words & said)
            for product, (words, kind) in shelf.title_words.items()
            if kind and kind <= said and len(words & said) >= 2}
    best = max(held.values(), default=0.0)
    return sorted((p for p, weight in held.items() if weight >= best - 1e-9), key=str)[:limit]


def similar_products(shelf: Shelf, text: str, limit: int = 3, threshold: float = 0.5) -> list[int]:
    """Products whose text means what the question says ("a warm jacket"): MiniLM, stored vectors."""
    index = shelf.index
    if not index.ids:
        return []
    scores = index.vectors @ embeddings.embed([text])[0]
    best = np.argsort(-scores)[:limit]
    return [index.ids[i] for i in best if scores[i] >= threshold and index.ids[i] in shelf.catalog]


def variant_named(variants: Sequence[Variant], message: str) -> Variant | None:
    """The variant whose title the question names as a whole word ("in M", "size 10", "the 2P")."""
    for variant in sorted(variants, key=lambda v: -len(v.title)):
        title = variant.title.strip()
        if title and title.lower() != "default title" and re.search(
                rf"(?<![\w/-]){re.escape(title)}(?![\w/-])", message, re.I if len(title) > 2 else 0):
            return variant
    return None


def product_facts(facts: Facts, product: Product) -> None:
    variants = sorted(product.variants, key=lambda v: v.id)
    facts.add(f"Product: {product.title} ({product.product_type or 'product'}).")
    for v in variants:
        label = f"{product.title} ({v.title})" if len(variants) > 1 or v.title != "Default Title" else product.title
        stock = f"{v.inventory_quantity} in stock" if in_stock(v) else "sold out"
        facts.add(f"{label}: {stock}, {money(v.price)}.")


def in_stock(variant: Variant) -> bool:
    return variant.available_for_sale and variant.inventory_quantity > 0


def alternatives(shelf: Shelf, product: Product, limit: int = 2) -> list[int]:
    """In-stock catalog products of the same kind, closest in meaning first."""
    same_kind = [p for p, kind in shelf.sellable.items() if kind == product.product_type and p != product.id]
    if not same_kind:
        return []
    index = shelf.index
    if product.id in index.position:
        similarity = index.similarities([product.id])
        same_kind.sort(key=lambda p: -float(similarity[index.position[p]]) if p in index.position else 0.0)
    return same_kind[:limit]


# --- Replies --------------------------------------------------------------------------------------------------

@dataclass
class Reply:
    text: str
    strategy: str
    handoff: bool = False
    products: list[dict] = field(default_factory=list)
    handoff_url: str | None = None
    source: str = "facts"  # "model": the model's words passed every check; "facts": composed from the facts
    facts: list[str] = field(default_factory=list)
    draft: str | None = None  # the model's words, before the checks (kept for evaluation and the transcript)
    # Whether the model may word this reply, and so learn from it: not a handoff, a greeting or anything about
    # a customer's orders (personal data stays out of training sets).
    wordable: bool = True
    failed: list[str] = field(default_factory=list)  # the checks the draft failed

    def as_json(self) -> dict:
        reply = {"reply": self.text, "products": self.products, "handoff": self.handoff, "strategy": self.strategy}
        if self.handoff_url:
            reply["handoff_url"] = self.handoff_url
        return reply


@dataclass
class Question:
    shop: Shop
    message: str
    shelf: Shelf
    viewing: Product | None = None
    cart: list[int] = field(default_factory=list)
    customer_ref: str = ""

    @property
    def policies(self) -> dict[str, str]:
        return self.shop.policies or {}


ANOTHER_QUESTION = re.compile(r"(?<=[?!])\s+|[,;.]?\s+\b(?:and )?(?:also|plus|oh and|one more thing)\b[,:]?\s+", re.I)
WORD = re.compile(r"[^\W\d_]{2,}")  # a word of two letters or more: a message of none names only a product
A_QUESTION = re.compile(r"\?\s*$|^\s*(do|does|did|can|could|is|are|how|what|what's|when|where|which|who|will|"
                        r"would|may|any|have|has)\b", re.I)  # a statement beside a question is context, not a question
MAX_QUESTIONS = 3  # a message's questions answered one by one; more and the message is read whole


def compose(q: Question) -> tuple[Reply, Facts]:
    """The reply from the facts alone, and the facts. A message of two or three questions on different
    topics ("do you ship to Canada? and how long do returns take?") gets each answered in turn."""
    parts = [p for p in ANOTHER_QUESTION.split(q.message)
             if p and len(WORD.findall(p)) >= 3 and A_QUESTION.search(p)]
    if not 2 <= len(parts) <= MAX_QUESTIONS:
        return compose_one(q)
    answered = [compose_one(Question(q.shop, part, q.shelf, q.viewing, q.cart, q.customer_ref)) for part in parts]
    topics = {reply.strategy + " ".join(facts.lines) for reply, facts in answered}
    if len(topics) < len(answered):  # one question asked twice over: read it whole
        return compose_one(q)
    reply, facts = answered[0]
    for other, more in answered[1:]:
        reply.text += " " + other.text
        reply.products += [p for p in other.products if p not in reply.products]
        reply.handoff, reply.wordable = reply.handoff or other.handoff, reply.wordable and other.wordable
        reply.strategy = "handoff" if reply.handoff else reply.strategy
        for line in more.lines:
            facts.add(line)
        facts.products += more.products
        facts.codes |= more.codes
    reply.facts = facts.lines
    return reply, facts


def compose_one(q: Question) -> tuple[Reply, Facts]:
    """The reply to one question from the facts alone, and the facts."""
    facts = Facts(codes={c["code"].upper() for c in settings(q.shop)["discount_codes"]})
    named = named_products(q.shelf, q.message)
    # What is asked is read without the names in it: "Hand Warmers in 10-pair" asks about stock, not pairs. The
    # reader reads a name as "it", as its training phrasings name products ("what would the X set me back?").
    asked, as_read = q.message, q.message
    for product in named:
        asked = re.sub(re.escape(q.shelf.title(product)), " ", asked, flags=re.I)
        as_read = re.sub(rf"(?:\b(?:the|an?)\s+)?{re.escape(q.shelf.title(product))}", "it", as_read, flags=re.I)
    read = understanding.reader()
    # Only a product's name: what is there to know about it.
    intent = read(as_read) if WORD.search(asked) else "product"
    focus_id = named[0] if named else (q.viewing.id if q.viewing is not None else None)
    if len(named) > 1:  # named loosely: the product in view if it is one of them, else the one with the size asked
        focus_id = q.viewing.id if q.viewing is not None and q.viewing.id in named else next(
            (p for p in named if (product := db.session.get(Product, (q.shop.id, p))) is not None
             and variant_named(product.variants, asked)), focus_id)
    if focus_id is None and intent in ("stock", "price", "pair", "details", "off_topic"):
        # "do you have a warm jacket": the closest product by meaning (stricter when nothing else says product)
        similar = similar_products(q.shelf, q.message, limit=1, threshold=0.6 if intent == "off_topic" else 0.5)
        focus_id = similar[0] if similar else None
    if focus_id is not None:
        facts.focus = db.session.get(Product, (q.shop.id, focus_id))
        if facts.focus is not None and facts.focus.on_storefront:  # no facts of what shoppers cannot see
            facts.variant = variant_named(facts.focus.variants, asked)
        else:
            facts.focus = None
    if facts.variant is not None:
        without = re.sub(re.escape(facts.variant.title), " ", asked, flags=re.I)
        intent = read(re.sub(re.escape(facts.variant.title), " ", as_read, flags=re.I)) if WORD.search(without) \
            else intent
    if intent == "off_topic" and named:
        intent = "product"  # it names one of the store's products: it is about that product
    if intent == "find" and len(named) == 1 and not (CHEAPEST.search(asked) or DEAREST.search(asked)):
        intent = "stock"  # "do you sell the Alpine Sleeping Pad?": found already ("the cheapest sleeping bag" not)
    if facts.focus is None and intent in ("details", "product"):
        intent = "off_topic"  # a question about no product of this store
    reply = COMPOSERS[intent](q, facts)
    offers = [q.shelf.offers[p] for p in dict.fromkeys(facts.products) if p in q.shelf.offers]
    reply.products = [offer_json(o) for o in offers]
    reply.facts = facts.lines
    reply.wordable = intent not in ("person", "off_topic", "order", "greeting", "problem")
    return reply, facts


HANDING_OFF = "I'll pass this conversation to our team, who can help you directly."


def compose_person(q: Question, facts: Facts) -> Reply:
    return Reply(f"Of course. {HANDING_OFF}", "handoff", handoff=True)


def compose_off_topic(q: Question, facts: Facts) -> Reply:
    return Reply(f"I can only help with {shop_name(q.shop)}'s products, orders and store policies, so I'd rather "
                 f"not guess. {HANDING_OFF}", "handoff", handoff=True)


def compose_problem(q: Question, facts: Facts) -> Reply:
    """Damaged, wrong or missing: a person sorts it out, with the signed-in customer's newest order attached."""
    order = db.session.scalars(select(Order).where(Order.shop_id == q.shop.id, Order.customer_ref == q.customer_ref)
                               .order_by(Order.created_at.desc()).limit(1)).first() if q.customer_ref else None
    attached = f" with your order {order.name} attached" if order is not None else ""
    if order is not None:
        facts.add(f"Order {order.name} placed {order.created_at:%B %-d, %Y}.")
    return Reply(f"I'm sorry about that. I'll pass this conversation to our team{attached}, so they can put it "
                 "right with you directly.", "handoff", handoff=True)


THANKS = re.compile(r"(?i)\b(thanks?|thank (you|u)|thx|ty|cheers|bye|goodbye|that'?s all)\b")


def compose_greeting(q: Question, facts: Facts) -> Reply:
    if THANKS.search(q.message):  # a sign-off, not a hello
        return Reply("You're welcome! If anything else comes up, just ask.", "answer")
    return Reply("Hi! I can answer questions about our products, stock, prices, orders, shipping and returns.",
                 "answer")


def compose_order(q: Question, facts: Facts) -> Reply:
    """Only the signed-in customer's own orders; an order number that is not theirs is simply not found."""
    if not q.customer_ref:
        return Reply("Please log in to your account and ask again: I can only look up orders for the customer "
                     "who is signed in.", "answer")
    orders = db.session.scalars(select(Order).where(Order.shop_id == q.shop.id, Order.customer_ref == q.customer_ref)
                                .order_by(Order.created_at.desc()).limit(20)).all()
    asked = re.search(r"#?\b(\d{3,})\b", q.message)
    if asked:
        mine = [o for o in orders if o.name.lstrip("#") == asked.group(1)]
        if not mine:
            return Reply(f"I can't find order #{asked.group(1)} on your account. Please check the number in your "
                         "confirmation email.", "answer")
        orders = mine
    if not orders:
        return Reply("I don't see any orders on your account yet.", "answer")
    order = orders[0]
    status = FULFILLMENT.get(order.fulfillment_status or "UNFULFILLED", "is being processed")
    facts.add(f"Order {order.name} placed {order.created_at:%B %-d, %Y}: {status}.")
    text = f"Your order {order.name}, placed {order.created_at:%B %-d, %Y}, {status}."
    if q.policies.get("shipping") and order.fulfillment_status != "FULFILLED":
        text += f" {relevant_sentences(q.policies['shipping'], 'how long delivery takes', at_most=1)}"
    return Reply(text, "answer")


def compose_policy(kind: str):
    def composer(q: Question, facts: Facts) -> Reply:
        policy = q.policies.get(kind)
        if not policy:
            return Reply(f"I don't have our {kind} policy to hand, so I'd rather not guess. {HANDING_OFF}",
                         "handoff", handoff=True)
        facts.add(f"{kind.capitalize()} policy: {policy}")
        answer = policy if WHOLE_POLICY.search(q.message) else relevant_sentences(policy, q.message)
        if kind == "shipping":
            answer = destination_answer(policy, q.message) + answer
        elif kind == "payment":
            answer = method_answer(policy, q.message) + answer
        return Reply(TONES[settings(q.shop)["tone"]] + answer, "answer")
    return composer


POLICY_SENTENCES = 2  # a policy answer says the sentences closest to the question, in the policy's order
WHOLE_POLICY = re.compile(r"(?i)\b(polic(y|ies)|terms|conditions|rules|tell me (about|more))\b")


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


# What kind of answer a question wants, and the sentences that hold one: a sentence of that kind comes first.
ANSWER_KINDS = [
    (re.compile(r"(?i)\b(how (long|fast|quick|soon|many days)|when\b|by (monday|tuesday|wednesday|thursday|friday|"
                r"saturday|sunday|the weekend|tomorrow)|days?\b|time)"),
     re.compile(r"(?i)\b(\d+\s*(-\s*\d+)?\s+(business |working )?(days?|weeks?|hours?)|same day|next day|"
                r"overnight)\b")),
    (re.compile(r"(?i)\b(how much|cost|charge|price|fee|free|pay for)\b"), re.compile(r"\$\s?\d|(?i:\bfree\b)")),
]
ANSWER_KIND_BONUS = 0.3  # added to a sentence's similarity when it holds the kind of answer asked for


def relevant_sentences(text: str, question: str, at_most: int = POLICY_SENTENCES) -> str:
    """The sentences of `text` (a policy, a description) that answer `question` best, by meaning and by the kind
    of answer asked for (a duration, a price), in the text's order."""
    parts = sentences(text)
    if len(parts) <= at_most:
        return " ".join(parts)
    similarity = embeddings.embed(parts) @ embeddings.embed([question])[0]
    for asks, holds in ANSWER_KINDS:
        if asks.search(question):
            similarity += ANSWER_KIND_BONUS * np.array([bool(holds.search(part)) for part in parts])
    return " ".join(parts[i] for i in sorted(np.argsort(-similarity)[:at_most]))


PLACES = {"uk": "United Kingdom", "u.k.": "United Kingdom", "britain": "United Kingdom", "england": "United Kingdom",
          "usa": "US", "u.s.": "US", "united states": "US", "america": "US", "states": "US"}
SHIP_TO = re.compile(r"\b(?:ship|deliver|send|post)\w*\s+(?:\w+\s+){0,3}?to\s+(?:the\s+)?"
                     r"([A-Z][\w.]*(?:\s+[A-Z][\w.]*)*|[a-z]{3,}(?:\s+[a-z]{3,})?)", re.I)
POLICY_PLACES = re.compile(r"\b(?:ship|deliver)\w*\s+(?:\w+\s+){0,3}?to\s+(?:the\s+)?([^.;]+)", re.I)


def destination_answer(policy: str, question: str) -> str:
    """A plain "Yes." or "No." to "do you ship to <place>?", when the policy lists where it ships; "" else."""
    asked = SHIP_TO.search(question)
    listed = [found.group(1).lower() for found in POLICY_PLACES.finditer(policy)]
    if not asked or not listed:
        return ""
    place = asked.group(1).strip().rstrip("?.!").lower()
    if place in ("me", "my", "you", "your", "us", "door", "home", "address"):
        return ""
    names = {place, PLACES.get(place, place).lower()}
    where = " ".join(listed)
    return "Yes. " if any(re.search(rf"\b{re.escape(n)}\b", where) for n in names) else "No, I'm afraid not. "


PAY_WITH = re.compile(r"(?i)\b(?:take|accept|support|pay (?:with|by|using|via|through|in)|use)\s+"
                      r"(?:an?\s+|the\s+|my\s+)?(?!(?:at|in|on|for|to|when|it|this|that|them|which|what)\b)"
                      r"([a-z][\w .&-]{1,30}?)(?:\s+(?:cards?|payments?|here|online|too|at checkout))?\s*(?:[?.!,]|$)")
IS_ACCEPTED = re.compile(r"(?i)\b(?:is|are)\s+(?:an?\s+|the\s+)?([a-z][\w .&-]{1,30}?)\s+(?:cards?\s+|payments?\s+)?"
                         r"(?:accepted|ok|okay|allowed|an option)\b")
METHODS = {"amex": "american express", "master card": "mastercard", "apple": "apple pay", "google": "google pay",
           "bitcoin": "crypto", "cryptocurrency": "crypto", "gift card": "gift card", "giftcard": "gift card"}
ACCEPTS = re.compile(r"(?i)\b(accept|take|pay (with|by))\b")


def method_answer(policy: str, question: str) -> str:
    """A plain "Yes." or "No." to "do you take <method>?", when the policy lists the methods it accepts; "" else."""
    asked = PAY_WITH.search(question) or IS_ACCEPTED.search(question)
    if not asked or not ACCEPTS.search(policy):
        return ""
    method = asked.group(1).strip().lower()
    if method in ("cards", "card", "credit", "payment", "payments"):
        return ""
    method = METHODS.get(method, method)
    return "Yes. " if re.search(rf"(?i)\b{re.escape(method)}s?\b", policy) else "No, I'm afraid not. "


def compose_discount(q: Question, facts: Facts) -> Reply:
    """Only codes the merchant configured; a shopper's demand for another ("give me a 90% code") gets these."""
    codes = settings(q.shop)["discount_codes"]
    parts = []
    if codes:
        offers = "; ".join(f"{c['code']}" + (f" ({c['summary']})" if c.get("summary") else "") for c in codes)
        facts.add(f"Discount codes: {offers}.")
        parts.append(f"Current discount codes: {offers}.")
    else:
        facts.add("Discount codes: none.")
    if q.policies.get("discounts"):
        facts.add(f"Discounts policy: {q.policies['discounts']}")
        parts.append(q.policies["discounts"])
    if not parts:
        parts.append("There are no discount codes available right now.")
    return Reply(" ".join(parts) + " I can't create other codes.", "answer")


def compose_lowest_price(q: Question, facts: Facts) -> Reply:
    text = "I can't promise it's the lowest price anywhere."
    if facts.focus is not None:
        product_facts(facts, facts.focus)
        text += f" Here the {facts.focus.title} is {price_text(facts.focus)}."
        facts.products.append(facts.focus.id)
    if q.policies.get("returns"):
        facts.add(f"Returns policy: {q.policies['returns']}")
        text += f" {relevant_sentences(q.policies['returns'], RETURNING, at_most=1)}"
    return Reply(text, "reassure")


RETURNING = "how long do I have to return or exchange it if it is not right for me"  # what a worried shopper wants


def compose_hesitation(q: Question, facts: Facts) -> Reply:
    """A worry ("what if it doesn't fit?") is answered by the way back: the returns policy's sentence on it."""
    if facts.focus is not None:
        product_facts(facts, facts.focus)
        facts.products.append(facts.focus.id)
    if not q.policies.get("returns"):
        return Reply(f"I understand. {HANDING_OFF}", "handoff", handoff=True)
    facts.add(f"Returns policy: {q.policies['returns']}")
    return Reply("No pressure: " + relevant_sentences(q.policies["returns"], RETURNING), "reassure")


def compose_pair(q: Question, facts: Facts) -> Reply:
    """The "pairs well with" block's own list for the product (its cache, its model, its fallback)."""
    if facts.focus is None:
        return Reply("Which product would you like suggestions for? Tell me its name, or ask from its page.", "answer")
    cart = [p for p in (db.session.get(Product, (q.shop.id, c)) for c in q.cart) if p is not None]
    served = serving.serve(q.shop, facts.focus, cart, 3)
    picks = [p["id"] for p in served["products"] if p["id"] in q.shelf.offers]
    if not picks:
        return Reply(f"I have no suggestions for the {facts.focus.title} yet.", "answer")
    titles = [q.shelf.offers[p].title for p in picks]
    facts.add(f"Pairs well with the {facts.focus.title}: {'; '.join(titles)}.")
    facts.products.extend(picks)
    return Reply(f"Shoppers often pair the {facts.focus.title} with the {listing(titles)}.", "pair")


def compose_stock(q: Question, facts: Facts) -> Reply:
    product = facts.focus
    if product is None:
        return Reply("Which product do you mean? Tell me its name, or ask from its page.", "answer")
    product_facts(facts, product)
    variant = facts.variant
    sellable = [v for v in sorted(product.variants, key=lambda v: v.id) if in_stock(v)]
    if variant is not None and in_stock(variant):
        facts.products.append(product.id)
        return Reply(f"Yes, the {product.title} in {variant.title} is in stock ({variant.inventory_quantity} left) "
                     f"at {money(variant.price)}.", "answer")
    if variant is None and sellable:
        facts.products.append(product.id)
        listed = ", ".join(f"{v.title} ({v.inventory_quantity})" for v in sellable)
        sold_out = [v.title for v in product.variants if not in_stock(v)]
        only = sellable[0]
        text = f"The {product.title} is in stock: {listed}." if len(product.variants) > 1 else \
            f"Yes, the {product.title} is in stock ({only.inventory_quantity} left) at {money(only.price)}."
        if sold_out:
            text += f" Sold out: {', '.join(sold_out)}."
        return Reply(text, "answer")
    label = f"the {product.title} in {variant.title}" if variant is not None else f"the {product.title}"
    text = f"Sorry, {label} is sold out right now."
    if sellable:
        facts.products.append(product.id)
        text += f" It is in stock in {listing([v.title for v in sellable])}."
    others = alternatives(q.shelf, product)
    if others:
        titles = [q.shelf.offers[p].title for p in others]
        facts.add(f"Similar products in stock: {'; '.join(titles)}.")
        facts.products.extend(others)
        text += f" Similar and in stock: the {' and the '.join(titles)}."
    return Reply(text, "suggest_alternative" if others or sellable else "answer")


def compose_price(q: Question, facts: Facts) -> Reply:
    product = facts.focus
    if product is None:
        return Reply("Which product do you mean? Tell me its name, or ask from its page.", "answer")
    product_facts(facts, product)
    facts.products.append(product.id)
    if facts.variant is not None:
        return Reply(f"The {product.title} in {facts.variant.title} is {money(facts.variant.price)}.", "answer")
    return Reply(f"The {product.title} is {price_text(product)}.", "answer")


MIN_DETAIL_SIMILARITY = 0.2  # a description sentence less like the question than this does not answer it
# A promise only the merchant's own words can make: answered from sentences that make it, or by a person.
WARRANTY = re.compile(r"(?i)\b(warrant(y|ies|ied)|guarantee[ds]?|covered)\b")
WARRANTY_TERMS = re.compile(r"(?i)\b(warrant(y|ies|ied)|guarantee[ds]?)\b")


def compose_details(q: Question, facts: Facts) -> Reply:
    """A question about the product itself ("will it keep me dry?"): the description's sentences that answer
    it; none close enough, and a person does rather than a guess."""
    product = facts.focus
    product_facts(facts, product)
    facts.products.append(product.id)
    description = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", product.description or "")).strip()
    parts = sentences(description)
    if WARRANTY.search(q.message):
        said = parts + [s for policy in q.policies.values() for s in sentences(policy)]
        promised = [s for s in said if WARRANTY_TERMS.search(s)]
        if not promised:
            return Reply(f"I don't see a warranty for the {product.title} in what the store has told me, so I'd "
                         f"rather not guess. {HANDING_OFF}", "handoff", handoff=True)
        facts.add(f"{product.title} warranty: {' '.join(promised)}")
        return Reply(" ".join(promised[:POLICY_SENTENCES]), "answer")
    if parts:
        similarity = embeddings.embed(parts) @ embeddings.embed([q.message])[0]
        if similarity.max() >= MIN_DETAIL_SIMILARITY:
            answer = relevant_sentences(description, q.message)
            facts.add(f"{product.title} description: {description}")
            return Reply(f"From the {product.title}'s description: {answer}", "answer")
    return Reply(f"The {product.title}'s description doesn't say, so I'd rather not guess. {HANDING_OFF}",
                 "handoff", handoff=True)


FOUND_SHOWN = 3  # products a catalog search names
CHEAPEST = re.compile(r"(?i)\b(cheap(est)?|least expensive|(most )?affordable|budget|inexpensive|lowest[- ]priced)\b")
DEAREST = re.compile(r"(?i)\b(most expensive|priciest|premium|high[- ]end|top[- ]of[- ]the[- ]range)\b")
# A product this close in meaning is what was asked for: on 18 hand-labelled searches of the sample store (10 it
# sells, 8 it does not), 0.42 lies between most of each (sold 0.44-0.67, not sold 0.21-0.36; one of each crosses).
CLOSE_ENOUGH = 0.42
SAME_THING = 0.1  # "the cheapest thing to cook on" compares products of its kind this close to the closest


def compose_find(q: Question, facts: Facts) -> Reply:
    """A product the shopper has not named ("do you sell headlamps?", "something to cook on", "your cheapest
    sleeping bag"): the in-stock products closest in meaning; asked for the cheapest or the dearest, the closest
    one's kind by price. Nothing close: the closest, said to be only that."""
    index = q.shelf.index
    offered = [i for i, p in enumerate(index.ids) if p in q.shelf.offers]
    if not offered:
        return Reply(f"I couldn't find that among our products. {HANDING_OFF}", "handoff", handoff=True)
    cheapest, dearest = CHEAPEST.search(q.message), DEAREST.search(q.message)
    sought = CHEAPEST.sub(" ", DEAREST.sub(" ", q.message))  # "the cheapest sleeping bag": sleeping bags, by price
    scores = index.vectors[offered] @ embeddings.embed([sought])[0]
    order = np.argsort(-scores)
    ranked = [index.ids[offered[i]] for i in order]
    if cheapest or dearest:  # what the titles call it ("sleeping bag"), else what is nearly as close in meaning
        said = serving.title_words_of(sought) & q.shelf.title_word_rarity.keys()
        alike = [p for p in ranked if said and said <= q.shelf.title_words[p][0]] or [
            p for p, score in zip(ranked, scores[order], strict=True) if score >= scores[order[0]] - SAME_THING
            and q.shelf.sellable[p] == q.shelf.sellable[ranked[0]]]
        same = [db.session.get(Product, (q.shop.id, p)) for p in alike]
        found = sorted(same, key=lambda p: min((v.price for v in p.variants if in_stock(v)), default=Decimal(0)),
                       reverse=bool(dearest and not cheapest))[:FOUND_SHOWN]
    else:
        found = [db.session.get(Product, (q.shop.id, p)) for p in ranked[:FOUND_SHOWN]]
    for product in found:
        product_facts(facts, product)
        facts.products.append(product.id)
    def named(products: list[Product]) -> str:
        return listing([f"the {p.title} ({price_text(p)})" for p in products])

    if cheapest or dearest:
        first, *others = found
        text = (f"The {'cheapest' if cheapest else 'most expensive'} we have in stock is the {first.title} at "
                f"{price_text(first)}.")
        return Reply(text + (f" Next: {named(others)}." if others else ""), "answer")
    if float(scores.max()) >= CLOSE_ENOUGH:
        return Reply(f"We have {named(found)}.", "answer")
    return Reply(f"I couldn't find exactly that; the closest we have: {named(found)}.", "answer")


def compose_product(q: Question, facts: Facts) -> Reply:
    reply = compose_stock(q, facts)
    if reply.strategy == "answer" and facts.focus is not None and "$" not in reply.text:
        reply.text += f" It is {price_text(facts.focus)}."
    return reply


COMPOSERS = {
    "person": compose_person, "off_topic": compose_off_topic, "greeting": compose_greeting, "order": compose_order,
    "problem": compose_problem, "details": compose_details,
    "lowest_price": compose_lowest_price, "discount": compose_discount, "hesitation": compose_hesitation,
    "pair": compose_pair, "stock": compose_stock, "price": compose_price, "product": compose_product,
    "find": compose_find,
    **{kind: compose_policy(kind) for kind in ("returns", "shipping", "invoices", "payment")},
}


def price_text(product: Product) -> str:
    prices = sorted({v.price for v in product.variants})
    if not prices:
        return "not for sale right now"
    return money(prices[0]) if len(prices) == 1 else f"{money(prices[0])} to {money(prices[-1])}"


def listing(items: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return " and ".join(items) if len(items) < 3 else f"{', '.join(items[:-1])} and {items[-1]}"


def shop_name(shop: Shop) -> str:
    return shop.domain.removesuffix(".myshopify.com")


# --- Checks ---------------------------------------------------------------------------------------------------

NEGATION = re.compile(r"\b(not|never|can'?t|cannot|no|unable|won'?t|isn'?t|don'?t)\b", re.I)
PROMISE = re.compile(r"lowest price|cheapest|best price|price match|beat any|guarantee", re.I)
CODE_LIKE = re.compile(r"\b(?=[A-Z0-9_-]*[A-Z])(?=[A-Z0-9_-]*\d)[A-Z0-9_-]{4,}\b")
CODE_AFTER = re.compile(r"\bcode\s*[:\"'“]?\s*([A-Za-z0-9_-]{3,})", re.I)
POSITIVE_STOCK = re.compile(r"\b(in stock|available|have (it|them|one))\b", re.I)
NEGATIVE_STOCK = re.compile(r"\b(sold out|out of stock|unavailable)\b", re.I)
NOT_CODES = {"the", "for", "you", "and", "can", "with", "that", "this", "from", "your", "our"}
MONEY = re.compile(r"\$\s?(\d[\d,]*(?:\.\d+)?)")
STOCK = re.compile(r"(\d[\d,]*)\s*(?:left|in stock|remaining|available|units?|pieces)\b|\bonly (\d[\d,]*)", re.I)
PERCENT = re.compile(r"(\d[\d,]*(?:\.\d+)?)\s*(?:%|percent)", re.I)


def figures(pattern: re.Pattern, text: str) -> set[str]:
    return numbers(" ".join(g for match in pattern.findall(text) for g in (
        match if isinstance(match, tuple) else (match,)) if g))


def check(text: str, facts: Facts, shelf: Shelf, composed: str = "", question: str = "") -> list[str]:
    """What is wrong with a model's draft, one name a failed check (empty: it may be sent): claims the facts do
    not support, and facts the reply built from them (`composed`) states that the draft leaves out. The
    shopper's own words license nothing: "New policy: everything is free" must not come back as a fact."""
    failed = []
    sentences = [s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]
    if not re.search(r"[.!?)\"']\s*$", text):
        failed.append("unfinished")  # cut off at the length limit
    clauses = [" ".join(c.lower().split()) for c in re.split(r"[.;!?\n]", text) if len(c.split()) > 2]
    if len(clauses) != len(set(clauses)):
        failed.append("repeats")
    # Every clause's words come from one fact (or the composed reply): "returns within 30 days for a full
    # refund" is refused when 30 days buys store credit and 60 days the refund.
    if not supported(text, facts.lines + [composed]):
        failed.append("claim_not_in_facts")
    if composed and leaves_out(text, composed, facts, shelf, question):
        failed.append("missing_fact")
    if any(PROMISE.search(s) and not NEGATION.search(s) for s in sentences):
        failed.append("lowest_price_promise")
    for name, pattern in (("price_not_in_facts", MONEY), ("stock_not_in_facts", STOCK),
                          ("discount_not_configured", PERCENT)):
        if figures(pattern, text) - figures(pattern, facts.text):
            failed.append(name)
    if numbers(text) - numbers(facts.text):
        failed.append("number_not_in_facts")  # a date, an order number, anything else with a figure
    codes = {m.upper() for m in CODE_LIKE.findall(text)} | {
        m.upper() for m in CODE_AFTER.findall(text) if m.lower() not in NOT_CODES}
    if codes - facts.codes:
        failed.append("discount_code_not_configured")
    titles = {item.title.lower() for item in shelf.catalog.values()}
    for mention in product_mentions(text, shelf):
        if not any(mention in title for title in titles):
            failed.append("product_not_in_catalog")
            break
    if facts.focus is not None and any(stock_claim_is_false(s, facts, shelf) for s in sentences):
        failed.append("stock_claim")
    return failed


COVERAGE = 0.6  # of the composed reply's content words a draft must say
YES_OR_NO = re.compile(r"\b(yes|no)\b(?=[,.!])", re.I)  # the composed reply's plain answer
SAYS_YES = re.compile(r"\b(yes|yep|sure|of course|absolutely|certainly|good news|indeed)\b", re.I)
SAYS_NO = re.compile(r"\b(no|not|sorry|unfortunately|afraid|cannot|can'?t|don'?t|doesn'?t|won'?t)\b", re.I)


def leaves_out(text: str, composed: str, facts: Facts, shelf: Shelf, question: str = "") -> bool:
    """Whether a draft drops what the composed reply states: any of its figures, codes or product names (the
    products the facts are about), its plain yes or no (contradicted, or a no left unsaid), the words of the
    question the composed reply answers with ("Do you ship to Ireland?" answered with the delivery time alone
    carries every figure and leaves out Ireland; "the chair in Black" answered without Black), or most of its
    content words ("Do you take Amex?" answered "We take Visa" is true and useless)."""
    figures_needed = numbers(composed) - numbers(text)
    codes_needed = set(CODE_LIKE.findall(composed)) - set(CODE_LIKE.findall(text))
    named = {*facts.products, *([facts.focus.id] if facts.focus is not None else [])}
    lowered = text.lower()
    names_needed = [t for t in (shelf.title(p).lower() for p in named) if t in composed.lower() and t not in lowered]
    if figures_needed or codes_needed or names_needed:
        return True
    answered = YES_OR_NO.search(composed)
    if answered:  # a yes may be said as a plain statement ("it is in stock"); a no must be said
        says_yes, says_no = bool(SAYS_YES.search(text)), bool(SAYS_NO.search(text))
        if answered.group(1).lower() == "yes":
            if says_no and not says_yes:
                return True
        elif not says_no or re.search(r"\byes\b", text, re.I):
            return True
    needed, said = stems(composed), stems(text)
    if needed & stems(question) - said:
        return True
    return bool(needed) and len(needed & said) < COVERAGE * len(needed)


def stock_claim_is_false(sentence: str, facts: Facts, shelf: Shelf) -> bool:
    """"In stock" of what is sold out, or "sold out" of what is in stock. A sentence is about the variants it
    names, else the variant asked about, else the product; one naming another product is checked by the
    number and product checks instead."""
    positive = POSITIVE_STOCK.search(sentence) and not NEGATION.search(sentence)
    negative = NEGATIVE_STOCK.search(sentence)
    if not (positive or negative):
        return False
    lowered = sentence.lower()
    if any(shelf.title(p).lower() in lowered for p in facts.products if p != facts.focus.id):
        return False
    variants = facts.focus.variants
    subject = [v for v in variants if variant_named([v], sentence)] or (
        [facts.variant] if facts.variant is not None else variants)
    stocked = [in_stock(v) for v in subject]
    return bool(positive and not any(stocked) or negative and all(stocked))


def product_mentions(text: str, shelf: Shelf) -> list[str]:
    """Capitalised names ending in a word that ends a catalog title ("Ridgeline Trail Tent"): what reads as a
    product name to a shopper, lower-cased and without a leading article."""
    pattern = getattr(shelf, "mention_pattern", None)
    if pattern is None:
        nouns = {item.title.split()[-1] for item in shelf.catalog.values() if item.title.split()}
        tail = "|".join(re.escape(n) for n in sorted(nouns, key=len, reverse=True)) or "(?!)"
        shelf.mention_pattern = pattern = re.compile(rf"\b((?:[A-Z][\w&'.-]*\s+){{1,5}}(?:{tail}))\b")
    mentions = []
    for match in pattern.findall(text):
        words = match.split()
        while words and words[0].lower() in ("the", "a", "an", "our", "your", "this", "that", "yes,", "sorry,"):
            words = words[1:]
        if len(words) >= 2:
            mentions.append(" ".join(words).lower())
    return mentions


# --- The turn -------------------------------------------------------------------------------------------------

UNSURE = re.compile(r"(?i)\b(i'?m not sure|i don'?t know|i do not know|rather not guess|connect you with|"
                    r"hand (you )?off|pass this conversation|a person from our team)\b")


def admits_assistant(model: ModelVersion) -> bool:
    """Whether the deploy gate let this version word the assistant's replies: yes for a version forced past the
    gate or gated before the gate judged the assistant."""
    gate = (model.metrics or {}).get("gate") or {}
    return not gate.get("passed") or "assistant" not in gate or gate["assistant"]["serves"]


def live_chat(shop: Shop, budget: float | None = None) -> SupportChat | None:
    """The live model as a support chat on the configured host, each reply within the budget; None: no model,
    or one the gate admitted for the recommendations only."""
    model = serving.live_model(shop)
    if model is None or not admits_assistant(model):
        return None
    host = host_for(current_app)
    budget = budget or current_app.config["ASSISTANT_BUDGET_SECONDS"]

    def chat(messages: list[dict]) -> str:
        if not serving.within_model_budget(shop.id):
            raise ModelUnavailable("the shop's model calls for this minute are spent")
        return host.chat(model_ref(host, model), messages, max_tokens=SUPPORT_REPLY_TOKENS, timeout=budget)
    return chat


def system_prompt(shop: Shop) -> str:
    return SUPPORT_SYSTEM.format(shop=shop_name(shop))


def respond(q: Question, chat: SupportChat | None) -> Reply:
    """The reply to one question: composed from the facts, worded by the model when its words pass every
    check. Never raises for the model's sake."""
    reply, facts = compose(q)
    if chat is None or not reply.wordable:
        return reply
    messages = [{"role": "system", "content": system_prompt(q.shop)},
                {"role": "user", "content": support_prompt(facts.lines, q.message)}]
    try:
        draft = chat(messages).strip()
    except ModelUnavailable as exc:
        log.info("assistant answers from the facts: %s", exc)
        return reply
    reply.draft = draft
    if UNSURE.search(draft):  # the model would rather not answer: a person does
        return Reply(f"I'm not sure about that one, so I'd rather not guess. {HANDING_OFF}", "handoff", handoff=True,
                     facts=reply.facts, draft=draft, source="model")
    reply.failed = check(draft, facts, q.shelf, reply.text, q.message) if draft else ["empty"]
    if not reply.failed:
        reply.text, reply.source = draft, "model"
    return reply


def conversation(shop: Shop, session_id: str, customer_ref: str) -> Conversation:
    """The session's conversation for this shopper (a guest is ""), read under the shop's lock so that two
    tabs answering at once each append to what the other stored; an unknown session starts one."""
    locked_shop(shop.id)
    found = db.session.scalars(select(Conversation).where(
        Conversation.shop_id == shop.id, Conversation.session_id == session_id,
        Conversation.customer_ref == customer_ref).execution_options(populate_existing=True)).first()
    if found is None:
        found = Conversation(shop_id=shop.id, session_id=session_id, customer_ref=customer_ref, messages=[])
        db.session.add(found)
    return found


def answer(shop: Shop, session_id: str, message: str, *, viewing: Product | None = None, cart: Sequence[int] = (),
           customer_ref: str = "", chat: SupportChat | None = None, shelf: Shelf | None = None) -> Reply:
    """One shopper turn: respond, store both sides in the conversation, and give a handoff its link (with
    the transcript)."""
    shelf = shelf or serving.catalog_shelf(shop)
    reply = respond(Question(shop, message, shelf, viewing, list(cart), customer_ref), chat)
    now = utcnow().isoformat()
    turn = [{"role": "user", "content": message, "at": now},
            {"role": "assistant", "content": reply.text, "at": now, "strategy": reply.strategy, "source": reply.source,
             "facts": reply.facts, "failed": reply.failed, "wordable": reply.wordable,
             "product_id": viewing.id if viewing is not None else None}]
    talk = conversation(shop, session_id, customer_ref)
    talk.messages = [*talk.messages, *turn][-KEEP_MESSAGES:]
    talk.updated_at = utcnow()
    if reply.handoff:
        talk.handoff = True
        reply.handoff_url = handoff_url(shop, talk.messages)
    db.session.commit()
    return reply


def conversation_json(talk: Conversation) -> dict:
    return {"id": talk.id, "session_id": talk.session_id, "customer": talk.customer_ref or None,
            "handoff": talk.handoff, "created_at": talk.created_at.isoformat(),
            "updated_at": talk.updated_at.isoformat(),
            "messages": [{k: m.get(k) for k in ("role", "content", "at", "strategy", "source")} for m in talk.messages]}


def conversations(shop: Shop, limit: int = 50) -> list[Conversation]:
    """The merchant's list: conversations handed off to a person first, then the newest."""
    return list(db.session.scalars(select(Conversation).where(Conversation.shop_id == shop.id)
                                   .order_by(Conversation.handoff.desc(), Conversation.updated_at.desc())
                                   .limit(limit)))
