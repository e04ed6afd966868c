"""The prompt contract between training and serving: the system prompts, the candidate prompt, the answer
format and its parser, and the constraints (a GBNF grammar for llama.cpp, a JSON schema for Ollama) that
keep a model's picks to the candidates it was shown. Training writes examples with these functions and
every host reads answers with them, so what the model learns is what it is asked."""

from __future__ import annotations

import json
import re

RECOMMEND_SYSTEM = (
    "You recommend products from {shop} that pair well with what a customer is viewing and has in the cart. "
    "Choose from the candidates only. Answer with up to 4 lines, each a JSON object: "
    "{{\"title\": exact candidate title, \"reason\": one short sentence}}."
)
SUPPORT_SYSTEM = (
    "You are the support assistant of {shop}. Answer only from the store facts and policies given. "
    "Never promise the lowest price or invent a discount. If you do not know, offer to hand off to a person."
)
SUPPORT_REPLY_TOKENS = 96
CANDIDATES = 8  # retrieval's top products the model chooses among
MAX_PICKS = 4  # the most products the model names; retrieval fills the rest of a longer block
PROMPT_CART = 10  # the newest cart items the model reads (a 300-line wholesale order would not fit its context)
REASON_CHARS = 80


def recommendation_prompt(viewing: str, cart: list[str], candidates: list[str]) -> str:
    """The model re-ranks and explains candidates a retrieval step found; it never has to recall a title."""
    cart = cart[-PROMPT_CART:]
    return (f"Customer viewing: {viewing}. Cart: {', '.join(cart) if cart else 'empty'}.\n"
            f"Candidates: {'; '.join(candidates)}")


def support_prompt(facts: list[str], question: str) -> str:
    """The support model's user turn: the facts looked up for this question, then the shopper's words on one
    line (a shopper cannot start a "Store facts:" line of their own, nor write chat-template tokens)."""
    question = re.sub(r"(?i)(store facts|question)\s*:", r"\1", re.sub(r"<\|[^|]*\|>", " ", question))
    question = " ".join(question.split())
    return f"Store facts: {' '.join(facts) if facts else 'none'}\nQuestion: {question}"


def format_answer(items: list[tuple[str, str]]) -> str:
    """The trained answer: one JSON object a line, `{"title", "reason"}`."""
    return "\n".join(json.dumps({"title": title, "reason": reason}, ensure_ascii=False) for title, reason in items)


def parse_answer(text: str) -> list[dict]:
    """The trained answer format back into records; lines that are not a JSON object with a title are skipped."""
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line.strip())
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("title"), str):
            records.append(record)
    return records


def reason_for(item) -> str:
    """One short line on what a product (anything with a title and description) is for, from the merchant's
    own description."""
    text = item.description.split(":", 1)[1] if ":" in item.description else item.description
    sentence = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0].rstrip(".")
    words, out = sentence.split(), []
    for word in words:
        if len(" ".join(out + [word])) > 70:
            break
        out.append(word)
    return (" ".join(out) or item.title).capitalize()


def title_grammar(titles: list[str], lines: int) -> str:
    """GBNF: up to `lines` JSON lines whose title is exactly one of the candidates (never the whole catalog)."""
    def literal(text: str) -> str:
        return json.dumps(json.dumps(text)[1:-1])  # the title as it appears inside a JSON string, as GBNF

    alternatives = " | ".join(literal(t) for t in dict.fromkeys(titles))
    return "\n".join([
        f'root ::= line ("\\n" line){{0,{max(lines - 1, 0)}}}',
        'line ::= "{\\"title\\": \\"" title "\\", \\"reason\\": \\"" reason "\\"}"',
        f"title ::= {alternatives}",
        f'reason ::= [^"\\\\\\n]{{1,{REASON_CHARS}}}',
    ])


def answer_schema(titles: list[str], lines: int) -> dict:
    """The same constraint as a JSON schema (Ollama's `format`): an array of picks among the candidates."""
    return {"type": "array", "maxItems": lines, "minItems": 1, "items": {
        "type": "object", "required": ["title", "reason"],
        "properties": {"title": {"type": "string", "enum": list(dict.fromkeys(titles))},
                       "reason": {"type": "string", "maxLength": REASON_CHARS}},
    }}
