"""Where a fine-tuned model runs, behind one interface: `deploy`, `chat`, `rank`, `retire`, `health`.

- Embedded (default): llama.cpp in this process. Each GGUF is loaded once and used under a lock (a llama.cpp
  context is not thread-safe); the few most recently used stay loaded.
- Ollama (`OLLAMA_HOST`): the GGUF uploaded as a blob and created as `pairwell-<shop>:v<N>` with our own chat
  template and stop tokens.

Both take the same `chat(ref, messages, timeout=…)` (a support reply) and `rank(ref, messages, labels,
timeout=…)` (the log-probability of each candidate's letter as the reply's first token: one forward pass, no
text generated); `timeout` is a deadline for the whole call. Every other place that loads a GGUF and asks it
something (export's check, the deploy gate, offline evaluation, the demo) goes through the embedded host too."""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import numpy as np

Ranker = Callable[[list[dict], str], list[float]]
"""messages, the candidates' letters → each letter's log-probability as the answer (-inf: not among the host's
most likely tokens)."""


def best_first(scores: list[float]) -> list[int]:
    """The candidates' positions by a `Ranker`'s scores, ties in the order they were given (retrieval's)."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def letter_mass(scores: list[float]) -> float:
    """The probability a `Ranker`'s scores give the candidates' letters together (1: the model answers as
    trained)."""
    return sum(math.exp(score) for score in scores)


def chatml(messages: list[dict]) -> str:
    """The messages as SmolLM2's chat template writes them, up to the assistant's first token (CHATML_TEMPLATE in
    Python: training's `apply_chat_template` gives the same text when the first message is the system's)."""
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


class ModelUnavailable(Exception):
    """The host is down, the model is missing, or it was slower than the deadline: serve the fallback."""


# --- llama.cpp --------------------------------------------------------------------------------------------

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


class EmbeddedHost:
    name = "embedded"
    KEEP_LOADED = 3  # the live model, a new one being gated, and the one it is compared with

    def __init__(self):
        self._models: OrderedDict[str, tuple[object, threading.Lock]] = OrderedDict()
        self._guard = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="llama")
        atexit.register(self.close)

    def deploy(self, path: str, shop: str, version: int, system: str) -> str:
        """Check the file loads; the serving process loads it on its next request or readiness warm-up."""
        self.load(path)
        return path

    def retire(self, ref: str) -> None:
        with self._guard:
            entry = self._models.pop(ref, None)
        if entry is not None:
            with entry[1]:
                entry[0].close()

    def health(self) -> bool:
        return True

    def is_loaded(self, path: str) -> bool:
        return path in self._models

    def close(self) -> None:
        """Free the llama.cpp models before the interpreter tears down the library under them."""
        with self._guard:
            models, self._models = list(self._models.values()), OrderedDict()
        for llm, lock in models:
            with lock:
                llm.close()

    def load(self, path: str) -> tuple[object, threading.Lock]:
        with self._guard:
            if path in self._models:
                self._models.move_to_end(path)
                return self._models[path]
        if not Path(path).exists():
            raise ModelUnavailable(f"model file {path} is missing")
        entry = (load_gguf(path), threading.Lock())
        with self._guard:
            if path in self._models:  # another thread loaded it meanwhile
                entry[0].close()
                return self._models[path]
            self._models[path] = entry
            evicted = [self._models.popitem(last=False)[1] for _ in range(len(self._models) - self.KEEP_LOADED)]
        for llm, lock in evicted:
            with lock:
                llm.close()
        return entry

    def _answer(self, path: str, messages: list[dict], max_tokens: int) -> str:
        llm, lock = self.load(path)
        with lock:
            reply = llm.create_chat_completion(messages, max_tokens=max_tokens, temperature=0.0)
        return reply["choices"][0]["message"]["content"] or ""

    def chat(self, path: str, messages: list[dict], *, max_tokens: int = 160, timeout: float | None = None) -> str:
        if timeout is None:  # offline callers (export's check, evaluation) wait for the answer
            return self._answer(path, messages, max_tokens)
        return _within(self._pool, timeout, self._answer, path, messages, max_tokens)

    def _scores(self, path: str, messages: list[dict], labels: str) -> list[float]:
        import llama_cpp

        llm, lock = self.load(path)
        with lock:
            tokens = llm.tokenize(chatml(messages).encode(), add_bos=False, special=True)
            label_ids = [llm.tokenize(label.encode(), add_bos=False, special=False)[0] for label in labels]
            # What the context already holds of this prompt (the system prompt at least) is not computed again:
            # llama.cpp's eval drops the cache past `n_tokens` and goes on from there.
            held = llm.input_ids[:llm.n_tokens]
            shared = next((i for i, (a, b) in enumerate(zip(held, tokens[:-1])) if a != b),
                          min(len(held), len(tokens) - 1))
            llm.n_tokens = shared
            llm.eval(tokens[shared:])  # keeps only the last position's logits, which is all a ranking needs
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
            logits = logits.astype(np.float64)
        log_probs = logits - np.logaddexp.reduce(logits)
        return [float(log_probs[i]) for i in label_ids]

    def rank(self, path: str, messages: list[dict], labels: str, *, timeout: float | None = None) -> list[float]:
        if timeout is None:
            return self._scores(path, messages, labels)
        return _within(self._pool, timeout, self._scores, path, messages, labels)


def _within(pool: ThreadPoolExecutor, timeout: float, fn, *args):
    """fn(*args) or ModelUnavailable once `timeout` seconds have passed, whatever fn is waiting on."""
    future = pool.submit(fn, *args)
    try:
        return future.result(timeout=timeout)
    except ModelUnavailable:
        raise
    except FutureTimeout as exc:
        raise ModelUnavailable(f"model slower than {timeout}s") from exc
    except Exception as exc:
        raise ModelUnavailable(f"model failed: {type(exc).__name__}: {exc}") from exc


embedded_host = EmbeddedHost()


def rank_with_gguf(path: str | Path) -> Ranker:
    """A GGUF on the embedded host as a `Ranker` (export's check, the deploy gate, offline evaluation)."""
    return lambda messages, labels: embedded_host.rank(str(path), messages, labels)


# --- Ollama -----------------------------------------------------------------------------------------------

# ChatML, as SmolLM2 was trained; sent explicitly because Ollama otherwise guesses a template.
CHATML_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)
STOP_TOKENS = ["<|im_end|>", "<|im_start|>"]
TOP_LOGPROBS = 20  # the most alternatives Ollama reports for a token


def ollama_model_name(shop: str, version: int) -> str:
    return f"pairwell-{shop.removesuffix('.myshopify.com')}:v{version}"


class OllamaHost:
    name = "ollama"

    def __init__(self, host: str):
        import ollama

        self.client = ollama.Client(host=host, timeout=600)  # uploads and creates take a while
        self.base_url = str(self.client._client.base_url).rstrip("/")
        import httpx

        self._http = httpx.Client(base_url=self.base_url)  # one connection pool (a client a call costs 50 ms)
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ollama")

    def deploy(self, path: str, shop: str, version: int, system: str) -> str:
        """Upload the GGUF and create the shop's model version; returns the Ollama model name."""
        digest = self.client.create_blob(path)
        name = ollama_model_name(shop, version)
        self.client.create(model=name, files={"model.gguf": digest}, template=CHATML_TEMPLATE, system=system,
                           parameters={"stop": STOP_TOKENS, "temperature": 0, "num_ctx": 2048})
        return name

    def versions(self, shop: str) -> list[str]:
        prefix = ollama_model_name(shop, 0).split(":")[0] + ":"
        return sorted(m.model for m in self.client.list().models if m.model.startswith(prefix))

    def retire(self, ref: str) -> None:
        """Delete a version nobody serves any more (a missing one is already gone)."""
        import ollama

        try:
            self.client.delete(ref)
        except ollama.ResponseError as exc:
            if exc.status_code != 404:
                raise

    def health(self) -> bool:
        try:
            self.client.list()
            return True
        except Exception:
            return False

    def _post(self, body: dict, deadline: float) -> dict:
        """POST /api/chat, read as it arrives so that the deadline holds even against a host that trickles."""
        remaining = max(deadline - time.monotonic(), 0.01)
        chunks = []
        with self._http.stream("POST", "/api/chat", json=body, timeout=remaining) as response:
            for chunk in response.iter_raw():
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise ModelUnavailable("Ollama slower than its deadline")
        reply = json.loads(b"".join(chunks))
        if response.status_code != 200:
            raise ModelUnavailable(f"Ollama answered {response.status_code}: {reply.get('error')}")
        return reply

    def _answer(self, name: str, messages: list[dict], max_tokens: int, deadline: float) -> str:
        reply = self._post({"model": name, "messages": messages, "stream": False, "keep_alive": "30m",
                            "options": {"temperature": 0, "seed": 0, "num_predict": max_tokens}}, deadline)
        return (reply.get("message") or {}).get("content") or ""

    def _scores(self, name: str, messages: list[dict], labels: str, deadline: float) -> list[float]:
        """One token with its TOP_LOGPROBS alternatives: a letter outside them scores -inf. An Ollama too old to
        report log-probabilities ignores the request: no ranking, so the fallback serves."""
        reply = self._post({"model": name, "messages": messages, "stream": False, "keep_alive": "30m",
                            "logprobs": True, "top_logprobs": TOP_LOGPROBS,
                            "options": {"temperature": 0, "seed": 0, "num_predict": 1}}, deadline)
        first = (reply.get("logprobs") or [{}])[0]
        found: dict[str, float] = {}
        for alternative in first.get("top_logprobs") or []:
            token = str(alternative.get("token", "")).strip()
            found[token] = max(found.get(token, -math.inf), float(alternative.get("logprob", -math.inf)))
        scores = [found.get(label, -math.inf) for label in labels]
        if not any(math.isfinite(score) for score in scores):
            raise ModelUnavailable("Ollama reported no log-probability for any candidate's letter")
        return scores

    def chat(self, name: str, messages: list[dict], *, max_tokens: int = 160, timeout: float | None = None) -> str:
        timeout = 600.0 if timeout is None else timeout
        deadline = time.monotonic() + timeout
        return _within(self._pool, timeout, self._answer, name, messages, max_tokens, deadline)

    def rank(self, name: str, messages: list[dict], labels: str, *, timeout: float | None = None) -> list[float]:
        timeout = 600.0 if timeout is None else timeout
        deadline = time.monotonic() + timeout
        return _within(self._pool, timeout, self._scores, name, messages, labels, deadline)


class UnusableHost:
    """OLLAMA_HOST is set but unusable (malformed): every call is ModelUnavailable, so shoppers get the fallback
    and deploys fail with the reason."""

    name = "ollama"

    def __init__(self, reason: str):
        self.reason = reason

    def _refuse(self, *args, **kwargs):
        raise ModelUnavailable(self.reason)

    deploy = retire = chat = rank = versions = _refuse

    def health(self) -> bool:
        return False


def host_for(app) -> EmbeddedHost | OllamaHost | UnusableHost:
    """The configured host: Ollama when OLLAMA_HOST is set, else llama.cpp in this process."""
    if not app.config["OLLAMA_HOST"]:
        return embedded_host
    if "pairwell_ollama" not in app.extensions:
        try:
            app.extensions["pairwell_ollama"] = OllamaHost(app.config["OLLAMA_HOST"])
        except Exception as exc:
            return UnusableHost(f"OLLAMA_HOST={app.config['OLLAMA_HOST']!r} is unusable: {exc}")
    return app.extensions["pairwell_ollama"]


def model_ref(host, model) -> str:
    """What the host calls a deployed ModelVersion: its GGUF path (embedded) or its Ollama name."""
    if host.name == "embedded":
        return model.gguf_path
    name = (model.metrics or {}).get("deployment", {}).get("name")
    if not name:
        raise ModelUnavailable(f"model v{model.version} is not deployed on {host.name}")
    return name
