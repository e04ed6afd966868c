"""The prompt contract between training and serving: the system prompts, the ranking prompt with its lettered
candidates and its one-letter answer, and the support prompt. Training writes examples with these functions and
every host reads answers with them, so what the model learns is what it is asked."""

from __future__ import annotations

import re

# One store's model: no need to name the store. Every token of it is read on every storefront request.
RECOMMEND_SYSTEM = "Answer with the letter of the candidate the customer most likely buys too."
SUPPORT_SYSTEM = (
    "You are the support assistant of {shop}. Answer only from the store facts and policies given. "
    "Never promise the lowest price or invent a discount. If you do not know, offer to hand off to a person."
)
SUPPORT_REPLY_TOKENS = 96
CANDIDATES = 8  # retrieval's top products the model ranks, each under a letter
LABELS = "ABCDEFGH"  # the candidates' letters: each one token, the answer the model is trained to give
MAX_PICKS = 4  # the most products the model places; retrieval fills the rest of a longer block
PROMPT_CART = 3  # the newest cart items the model reads: each token of the prompt costs serving time


def ranking_prompt(viewing: str, cart: list[str], candidates: list[str]) -> str:
    """LlamaRec's verbalizer ranking (Yue et al., 2023): the candidates a retrieval step found, each under a
    letter, in retrieval's order. One forward pass scores them all by their letter's next-token probability;
    the model never has to write a title."""
    cart = [_one_line(c) for c in cart[-PROMPT_CART:]]
    lines = "\n".join(f"{label}. {_one_line(line)}" for label, line in zip(LABELS, candidates))
    return f"Customer viewing: {_one_line(viewing)}. Cart: {', '.join(cart) if cart else 'empty'}.\n" \
           f"Candidates:\n{lines}"


def candidate_lines(prompt: str) -> list[str]:
    """The candidates of a `ranking_prompt`, in their letters' order."""
    return [line[3:] for line in prompt.split("\nCandidates:\n", 1)[-1].splitlines()
            if line[:1] in LABELS and line[1:3] == ". "]


def candidate_line(title: str, product_type: str | None) -> str:
    """A candidate as the model reads it: its title and, where the store types products, its type."""
    return f"{title} ({product_type})" if product_type else title


def support_prompt(facts: list[str], question: str) -> str:
    """The support model's user turn: the facts looked up for this question, then the shopper's words on one
    line (a shopper cannot start a "Store facts:" line of their own, nor write chat-template tokens)."""
    question = re.sub(r"(?i)(store facts|question)\s*:", r"\1", _one_line(question))
    return f"Store facts: {' '.join(facts) if facts else 'none'}\nQuestion: {question}"


def support_parts(prompt: str) -> tuple[str, str]:
    """The facts ("" for none) and the shopper's question of a `support_prompt`."""
    facts, _, question = prompt.removeprefix("Store facts: ").rpartition("\nQuestion: ")
    return ("" if facts == "none" else facts), question


def _one_line(text: str) -> str:
    """Text as one plain line of a prompt: no chat-template tokens, no line breaks that would start a line."""
    return " ".join(re.sub(r"<\|[^|]*\|>", " ", text).split())


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
