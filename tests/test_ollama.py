"""The Ollama host against a loopback double of Ollama's API: deploy (blob + create with our template and
stop tokens), ranking by the candidates' letters through the proxy, versions, rollback, and the fallback when
Ollama is down."""

import pytest

from core.llm.model_hosts import CHATML_TEMPLATE, STOP_TOKENS, host_for
from core.model.pipeline import rollback, stage_deploy
from core.storage.models import ModelVersion, TrainingRun, db
from sample_store.ollama import OllamaDouble

from .test_proxy import proxy_url


@pytest.fixture
def ollama(app):
    double = OllamaDouble()
    app.config["OLLAMA_HOST"] = double.url
    yield double
    double.stop()


def verified_model(shop, tmp_path, version: int) -> tuple[TrainingRun, ModelVersion]:
    gguf = tmp_path / f"v{version}.gguf"
    gguf.write_bytes(b"GGUF" + bytes([version]) * 64)
    run = TrainingRun(shop_id=shop.id, status="succeeded")
    db.session.add(run)
    db.session.flush()
    model = ModelVersion(shop_id=shop.id, training_run_id=run.id, version=version, gguf_path=str(gguf),
                         quantization="q8_0", size_bytes=68, sha256="0" * 64, base_model="b", status="verified",
                         metrics={"gate": {"passed": True, "reason": "not below co-purchase"}})
    db.session.add(model)
    db.session.commit()
    return run, model


def test_deploy_uploads_and_creates_with_our_template_and_stops(app, ollama, installed_shop, tmp_path):
    run, model = verified_model(installed_shop, tmp_path, 1)
    stage_deploy(run)
    name = "pairwell-outdoor-test:v1"
    assert model.status == "deployed" and model.metrics["deployment"] == {"host": "ollama", "name": name}
    spec = ollama.models[name]
    assert spec["template"] == CHATML_TEMPLATE and spec["parameters"]["stop"] == STOP_TOKENS
    assert list(ollama.blobs.values()) == [(tmp_path / "v1.gguf").read_bytes()]
    assert host_for(app).versions(installed_shop.domain) == [name] and host_for(app).health()


def test_proxy_ranks_on_ollama_by_the_log_probabilities_of_the_candidates_letters(client, ollama, installed_shop,
                                                                                   store, tmp_path):
    from core.recommendations.serving import ranking, shelf_for

    stage_deploy(verified_model(installed_shop, tmp_path, 1)[0])
    ollama.contrary = True  # the model likes the eighth candidate best, then the seventh, ...
    viewing = store.products[0].id
    body = client.get(proxy_url(installed_shop.domain, product_id=viewing, limit=3, intent="related")).json
    asked = ollama.chats[-1]
    assert asked["logprobs"] is True and asked["top_logprobs"] == 20 and asked["options"]["num_predict"] == 1
    candidates = ranking(shelf_for(installed_shop), viewing, [])[:8]
    assert body["source"] == "model" and [p["id"] for p in body["products"]] == candidates[::-1][:3]


def test_an_ollama_that_reports_no_log_probabilities_means_the_fallback(client, ollama, installed_shop, store,
                                                                        tmp_path):
    stage_deploy(verified_model(installed_shop, tmp_path, 1)[0])
    ollama.logprobs = False  # an Ollama too old to report them answers with text alone
    body = client.get(proxy_url(installed_shop.domain, product_id=store.products[2].id, limit=4)).json
    assert ollama.chats[-1]["logprobs"] is True and body["source"] == "fallback" and len(body["products"]) == 4


def test_ollama_down_means_fallback_products(client, ollama, installed_shop, store, tmp_path):
    stage_deploy(verified_model(installed_shop, tmp_path, 1)[0])
    ollama.down = True
    assert not host_for(client.application).health()
    body = client.get(proxy_url(installed_shop.domain, product_id=store.products[1].id, limit=4)).json
    assert body["source"] == "fallback" and len(body["products"]) == 4


def test_rollback_reactivates_the_previous_version(ollama, installed_shop, tmp_path):
    first_run, first = verified_model(installed_shop, tmp_path, 1)
    second_run, second = verified_model(installed_shop, tmp_path, 2)
    stage_deploy(first_run)
    stage_deploy(second_run)
    assert (first.status, second.status) == ("retired", "deployed")
    assert set(ollama.models) == {"pairwell-outdoor-test:v2"}  # a retired version leaves the host
    assert rollback(installed_shop).id == first.id
    assert (first.status, second.status) == ("deployed", "retired")
    assert set(ollama.models) == {"pairwell-outdoor-test:v1"}
