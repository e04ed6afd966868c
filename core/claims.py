"""Checking words against facts: what a model wrote may reach a shopper only when the facts the app holds
say it. A clause is supported when its content words (numbers as values, words cut to five letters, the words
that carry no claim left out) all come from one fact: "returns within 30 days for a full refund" is not
supported by "within 60 days for a full refund; worn footwear within 30 days for store credit"."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from decimal import Decimal

NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
# Words that carry no claim of their own.
FILLER = set("""a an the and or but so if then than as at by for from in into of on to with about up it its
i i'm i'll i'd we we're we've our ours you you're you'll your yours it's this that these those there here they them
their is are was were be been being am do does did have has had can could will would should may might must
yes no not sorry sure course happy glad help hi hello thanks thank please just also still right now currently
today good great news let know me more anything else question ask what which who how when where
costs cost price priced only left available""".split())


def clauses_of(texts: Sequence[str]) -> list[str]:
    return [c for text in texts for c in re.split(r"(?<=[.!?])\s+|\n+|;", text) if c.strip()]


def value(number: str) -> str:
    """A number as written ("1,299.00") as its value ("1299")."""
    return format(Decimal(number.replace(",", "")).normalize(), "f")


def stems(text: str) -> set[str]:
    """A clause's content words, numbers as values and words cut to five letters ("returns" is "return")."""
    text = NUMBER.sub(lambda m: f" {value(m.group())} ", text.lower())
    return {w[:5] for w in re.findall(r"\d+(?:\.\d+)?|[a-z][a-z'&-]*", text) if w not in FILLER}


def numbers(text: str) -> set[str]:
    """Numbers as values: "$1,299.00" and "1299" are the same number."""
    return {value(raw) for raw in NUMBER.findall(text)}


def supported(text: str, facts: Iterable[str], also: set[str] = frozenset()) -> bool:
    """Whether every clause of `text` (sentences split at commas and "and") has all its content words in one
    fact, besides the words in `also`."""
    licences = [stems(c) for c in clauses_of(list(facts))]
    for clause in (part for sentence in clauses_of([text]) for part in re.split(r",|\band\b", sentence)):
        claim = stems(clause) - also
        if claim and not any(claim <= licence for licence in licences):
            return False
    return True
