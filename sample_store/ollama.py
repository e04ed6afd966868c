"""A loopback Ollama for tests and benchmarks, speaking the documented routes and reply shapes: blobs
(HEAD/POST), create (streamed or not), chat (with `logprobs` and `top_logprobs`), tags, delete. It does not run
models: asked for log-probabilities over lettered candidates, it likes them in the order given, which is all a
client needs. It can be stopped and started again on its port (what it holds survives), answer 503 (`down`) or
trickle (`trickle`)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from datetime import datetime, timezone

from flask import Flask, Response, jsonify, request
from werkzeug.serving import make_server

from core.llm.prompts import LABELS, candidate_lines

from .server import _QuietHandler


class OllamaDouble:
    def __init__(self):
        self.blobs: dict[str, bytes] = {}
        self.models: dict[str, dict] = {}
        self.chats: list[dict] = []
        self.down = False
        self.contrary = False  # likes lettered candidates last-first: a model that disagrees with their order
        self.logprobs = True  # False: an Ollama too old to report log-probabilities, which ignores the request
        self.trickle: float | None = None  # seconds between bytes of a chat reply: a host that hangs on
        app = Flask("ollama_double")
        app.add_url_rule("/api/blobs/<digest>", view_func=self.blob, methods=["HEAD", "POST"])
        app.add_url_rule("/api/create", view_func=self.create, methods=["POST"])
        app.add_url_rule("/api/chat", view_func=self.chat, methods=["POST"])
        app.add_url_rule("/api/tags", view_func=self.tags)
        app.add_url_rule("/api/delete", view_func=self.delete, methods=["DELETE"])
        app.before_request(lambda: (jsonify(error="connection refused"), 503) if self.down else None)
        self.app, self.port = app, 0
        self.start()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self):
        """Listen (again, on the same port after a stop: what it holds survives, like Ollama's disk)."""
        self.server = make_server("127.0.0.1", self.port, self.app, threaded=True, request_handler=_QuietHandler)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def blob(self, digest: str):
        if request.method == "HEAD":
            return Response(status=200 if digest in self.blobs else 404)
        body = request.get_data()
        if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            return jsonify(error="digest mismatch"), 400
        self.blobs[digest] = body
        return Response(status=201)

    def create(self):
        spec = request.get_json()
        missing = [d for d in (spec.get("files") or {}).values() if d not in self.blobs]
        if missing:
            return jsonify(error=f"blob {missing[0]} not found"), 400
        self.models[spec["model"]] = spec
        statuses = ["parsing GGUF", "using existing layer", "writing manifest", "success"]
        if spec.get("stream", True):
            return Response("".join(json.dumps({"status": s}) + "\n" for s in statuses),
                            content_type="application/x-ndjson")
        return jsonify(status="success")

    def chat(self):
        spec = request.get_json()
        self.chats.append(spec)
        if spec["model"] not in self.models:
            return jsonify(error=f"model '{spec['model']}' not found"), 404
        extra = {}
        letters = LABELS[:len(candidate_lines(spec["messages"][-1]["content"]))]
        if spec.get("logprobs") and letters and self.logprobs:
            # A model that agrees with the order it was given: the first letter likeliest, each next one less.
            liked = letters[::-1] if self.contrary else letters
            alternatives = [{"token": letter, "logprob": -1.0 - i} for i, letter in enumerate(liked)]
            content = liked[0]
            extra["logprobs"] = [{"token": content, "logprob": -1.0,
                                  "top_logprobs": alternatives[:spec.get("top_logprobs", 0)]}]
        else:
            content = "I can help with that."
        reply = json.dumps({"model": spec["model"], "created_at": datetime.now(timezone.utc).isoformat(),
                            "message": {"role": "assistant", "content": content}, "done": True,
                            "done_reason": "stop", "total_duration": 1000, "load_duration": 10,
                            "prompt_eval_count": 10, "eval_count": 20, **extra})
        if self.trickle:
            def slowly():
                for char in reply:
                    time.sleep(self.trickle)
                    yield char
            return Response(slowly(), content_type="application/json")
        return Response(reply, content_type="application/json")

    def tags(self):
        return jsonify(models=[{
            "name": name, "model": name, "modified_at": datetime.now(timezone.utc).isoformat(),
            "size": sum(len(self.blobs[d]) for d in spec["files"].values()),
            "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": {"format": "gguf", "family": "llama", "parameter_size": "135M", "quantization_level": "Q8_0"},
        } for name, spec in self.models.items()])

    def delete(self):
        name = request.get_json()["model"]
        if self.models.pop(name, None) is None:
            return jsonify(error=f"model '{name}' not found"), 404
        return Response(status=200)
