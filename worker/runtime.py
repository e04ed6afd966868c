"""The embedded model runtime: llama.cpp in-process (the default when OLLAMA_HOST is unset)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path


@contextlib.contextmanager
def _without_weight_repacking():
    """llama-cpp-python drops unknown keyword arguments, so `use_extra_bufts=False` has to reach the model
    params another way. One build here crashed decoding multi-token prompts with CPU weight repacking on."""
    import llama_cpp.llama_cpp as low_level

    default = low_level.llama_model_default_params

    def params():
        value = default()
        value.use_extra_bufts = False
        return value

    low_level.llama_model_default_params = params
    try:
        yield
    finally:
        low_level.llama_model_default_params = default


def load_gguf(path: str | Path, *, n_ctx: int = 2048, seed: int = 0, n_threads: int | None = None):
    from llama_cpp import Llama

    with _without_weight_repacking():
        return Llama(model_path=str(path), n_ctx=n_ctx, seed=seed, n_threads=n_threads, verbose=False)


def chat(llm, messages: list[dict], *, max_tokens: int = 160, temperature: float = 0.0, **kwargs) -> str:
    reply = llm.create_chat_completion(messages, max_tokens=max_tokens, temperature=temperature, **kwargs)
    return reply["choices"][0]["message"]["content"] or ""


def title_grammar(titles: list[str], lines: int) -> str:
    """GBNF: up to `lines` JSON lines whose title is exactly one of the candidates (never the whole catalog)."""
    def literal(text: str) -> str:
        return json.dumps(json.dumps(text)[1:-1])  # the title as it appears inside a JSON string, as GBNF

    alternatives = " | ".join(literal(t) for t in dict.fromkeys(titles))
    return "\n".join([
        f'root ::= line ("\\n" line){{0,{max(lines - 1, 0)}}}',
        'line ::= "{\\"title\\": \\"" title "\\", \\"reason\\": \\"" reason "\\"}"',
        f"title ::= {alternatives}",
        'reason ::= [^"\\\\\\n]{1,80}',
    ])
