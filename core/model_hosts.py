"""Where a fine-tuned model runs, behind one interface: `deploy`, `chat`, `retire`, `health`.

- Embedded (default): llama.cpp in this process. Each GGUF is loaded once and used under a lock (a llama.cpp
  context is not thread-safe); the few most recently used stay loaded. Picks are constrained by a GBNF grammar.
- Ollama (`OLLAMA_HOST`): the GGUF uploaded as a blob and created as `pairwell-<shop>:v<N>` with our own chat
  template and stop tokens; picks are constrained by a JSON schema (Ollama's `format`).

Both take the same `chat(ref, messages, candidates=…, picks=…, timeout=…)`: the constraint is derived from the
one candidate list, the answer comes back in the trained format (JSON lines), and `timeout` is a deadline for
the whole call. Every other place that loads a GGUF and asks it something (export's check, the deploy gate,
offline evaluation, the demo) goes through the embedded host too."""

from __future__ import annotations

import atexit
import contextlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from .prompts import MAX_PICKS, answer_schema, title_grammar

Chat = Callable[[list[dict], list[str] | None, int], str]
"""messages, the candidate titles the answer must choose from (None: free text), most picks → the answer."""


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

    def _answer(self, path: str, messages: list[dict], candidates: list[str] | None, picks: int,
                max_tokens: int) -> str:
        from llama_cpp import LlamaGrammar

        grammar = LlamaGrammar.from_string(title_grammar(candidates, picks), verbose=False) if candidates else None
        llm, lock = self.load(path)
        with lock:
            reply = llm.create_chat_completion(messages, max_tokens=max_tokens, temperature=0.0, grammar=grammar)
        return reply["choices"][0]["message"]["content"] or ""

    def chat(self, path: str, messages: list[dict], *, candidates: list[str] | None = None, picks: int = MAX_PICKS,
             max_tokens: int = 160, timeout: float | None = None) -> str:
        if timeout is None:  # offline callers (export's check, the gate, evaluation) wait for the answer
            return self._answer(path, messages, candidates, picks, max_tokens)
        return _within(self._pool, timeout, self._answer, path, messages, candidates, picks, max_tokens)


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


def chat_with_gguf(path: str | Path) -> Chat:
    """A GGUF on the embedded host as a `Chat` (export's check, the deploy gate, offline evaluation)."""
    return lambda messages, candidates, picks: embedded_host.chat(str(path), messages, candidates=candidates,
                                                                  picks=picks)


# --- Ollama -----------------------------------------------------------------------------------------------

# ChatML, as SmolLM2 was trained; sent explicitly because Ollama otherwise guesses a template.
CHATML_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)
STOP_TOKENS = ["<|im_end|>", "<|im_start|>"]


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

    def _answer(self, name: str, messages: list[dict], candidates: list[str] | None, picks: int,
                max_tokens: int, deadline: float) -> str:
        """POST /api/chat, read as it arrives so that the deadline holds even against a host that trickles."""
        body = {"model": name, "messages": messages, "stream": False, "keep_alive": "30m",
                "format": answer_schema(candidates, picks) if candidates else None,
                "options": {"temperature": 0, "seed": 0, "num_predict": max_tokens}}
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
        content = (reply.get("message") or {}).get("content") or ""
        try:
            picks_made = json.loads(content)
        except ValueError:
            return content
        picks_made = picks_made if isinstance(picks_made, list) else [picks_made]
        return "\n".join(json.dumps(p, ensure_ascii=False) for p in picks_made if isinstance(p, dict))

    def chat(self, name: str, messages: list[dict], *, candidates: list[str] | None = None, picks: int = MAX_PICKS,
             max_tokens: int = 160, timeout: float | None = None) -> str:
        """The picks as JSON lines (the trained answer format), whatever shape the schema made them take."""
        timeout = 600.0 if timeout is None else timeout
        deadline = time.monotonic() + timeout
        return _within(self._pool, timeout, self._answer, name, messages, candidates, picks, max_tokens, deadline)


class UnusableHost:
    """OLLAMA_HOST is set but unusable (malformed): every call is ModelUnavailable, so shoppers get the fallback
    and deploys fail with the reason."""

    name = "ollama"

    def __init__(self, reason: str):
        self.reason = reason

    def _refuse(self, *args, **kwargs):
        raise ModelUnavailable(self.reason)

    deploy = retire = chat = versions = _refuse

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
