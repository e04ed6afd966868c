"""Where the fine-tuned model runs. One interface (`deploy`, `chat`, `health`), two hosts:
- Embedded (default): llama.cpp in this process, one instance per GGUF, loaded once and used under a lock
  (a llama.cpp context is not thread-safe). Constrained by a GBNF grammar.
- Ollama (`OLLAMA_HOST`): the GGUF uploaded as a blob and created as `pairwell-<shop>:v<N>` with our own
  chat template and stop tokens; constrained by a JSON schema (Ollama's `format`)."""

from __future__ import annotations

import atexit
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


class ModelUnavailable(Exception):
    """The host is down, the model is missing, or it was slower than the budget: serve the fallback."""


class EmbeddedHost:
    name = "embedded"

    def deploy(self, path: str, shop: str, version: int, system: str) -> str:
        """Load once now, so the first shopper does not wait for it."""
        self._model(path)
        return path

    def health(self) -> bool:
        return True

    def __init__(self):
        self._models: dict[str, object] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="llama")
        atexit.register(self.close)

    def close(self) -> None:
        """Free the llama.cpp models before the interpreter tears down the library under them."""
        with self._guard:
            for model in self._models.values():
                model.close()
            self._models.clear()

    def _model(self, path: str):
        with self._guard:
            if path not in self._models:
                if not Path(path).exists():
                    raise ModelUnavailable(f"model file {path} is missing")
                from worker.runtime import load_gguf

                self._models[path] = load_gguf(path, n_ctx=2048)
                self._locks[path] = threading.Lock()
            return self._models[path], self._locks[path]

    def chat(self, path: str, messages: list[dict], *, grammar: str | None = None, max_tokens: int = 200,
             timeout: float = 1.5) -> str:
        def run() -> str:
            from llama_cpp import LlamaGrammar

            from worker.runtime import chat

            llm, lock = self._model(path)
            with lock:
                return chat(llm, messages, max_tokens=max_tokens,
                            grammar=LlamaGrammar.from_string(grammar, verbose=False) if grammar else None)

        future = self._pool.submit(run)
        try:
            return future.result(timeout=timeout)
        except ModelUnavailable:
            raise
        except TimeoutError as exc:
            raise ModelUnavailable(f"model slower than {timeout}s") from exc
        except Exception as exc:
            raise ModelUnavailable(f"model failed: {exc}") from exc


embedded_host = EmbeddedHost()


# ChatML, as SmolLM2 was trained; sent explicitly because Ollama otherwise guesses a template.
CHATML_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)
STOP_TOKENS = ["<|im_end|>", "<|im_start|>"]


def ollama_model_name(shop: str, version: int) -> str:
    return f"pairwell-{shop.removesuffix('.myshopify.com')}:v{version}"


def json_schema_for(titles: list[str], lines: int) -> dict:
    """Ollama constrains with a JSON schema: an array of picks whose titles are the candidates only."""
    return {"type": "array", "maxItems": lines, "minItems": 1, "items": {
        "type": "object", "required": ["title", "reason"],
        "properties": {"title": {"type": "string", "enum": titles}, "reason": {"type": "string", "maxLength": 80}},
    }}


class OllamaHost:
    name = "ollama"

    def __init__(self, host: str, chat_timeout: float = 1.5):
        import ollama

        self.client = ollama.Client(host=host, timeout=600)  # uploads and creates take a while
        self.chat_client = ollama.Client(host=host, timeout=chat_timeout)  # shoppers do not wait

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

    def delete(self, name: str) -> None:
        self.client.delete(name)

    def health(self) -> bool:
        try:
            self.client.list()
            return True
        except Exception:
            return False

    def chat(self, name: str, messages: list[dict], *, schema: dict | None = None, max_tokens: int = 200,
             timeout: float = 1.5) -> str:
        """The picks as JSON lines (the trained answer format), whatever shape the schema made them take."""
        import json

        try:
            reply = self.chat_client.chat(model=name, messages=messages, format=schema, stream=False, keep_alive="30m",
                                     options={"temperature": 0, "seed": 0, "num_predict": max_tokens})
        except Exception as exc:
            raise ModelUnavailable(f"Ollama failed: {exc}") from exc
        content = reply.message.content or ""
        try:
            picks = json.loads(content)
        except ValueError:
            return content
        picks = picks if isinstance(picks, list) else [picks]
        return "\n".join(json.dumps(p) for p in picks if isinstance(p, dict))


def host_for(app) -> EmbeddedHost | OllamaHost:
    """The configured host: Ollama when OLLAMA_HOST is set, else llama.cpp in this process."""
    if app.config["OLLAMA_HOST"]:
        if "pairwell_ollama" not in app.extensions:
            host = OllamaHost(app.config["OLLAMA_HOST"], chat_timeout=app.config["MODEL_BUDGET_SECONDS"])
            app.extensions["pairwell_ollama"] = host
        return app.extensions["pairwell_ollama"]
    return embedded_host
