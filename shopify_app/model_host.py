"""Where the fine-tuned model runs. Embedded (default): llama.cpp in this process, one instance per GGUF,
loaded once and used under a lock (a llama.cpp context is not thread-safe)."""

from __future__ import annotations

import atexit
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


class ModelUnavailable(Exception):
    """The host is down, the model is missing, or it was slower than the budget: serve the fallback."""


class EmbeddedHost:
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
