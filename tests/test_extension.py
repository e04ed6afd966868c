"""The theme app extension is shaped as Shopify deploys it and stays within its limits."""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from core.config import ROOT

EXTENSION = ROOT / "extensions" / "pairwell"


SCHEMA = re.compile(r"{% schema %}(.*){% endschema %}", re.S)


def schema(block: str) -> dict:
    text = (EXTENSION / "blocks" / block).read_text()
    return json.loads(SCHEMA.search(text).group(1))


def assert_translated(block: dict) -> None:
    """The block's name, its settings' labels and its options' labels are all `t:` keys of the schema locale."""
    translations = json.loads((EXTENSION / "locales" / "en.default.schema.json").read_text())
    keys = [block["name"]] + [s["label"] for s in block["settings"]]
    keys += [o["label"] for s in block["settings"] for o in s.get("options", [])]
    for key in keys:
        assert key.startswith("t:"), key
        node = translations
        for part in key.removeprefix("t:").split("."):
            node = node[part]
        assert isinstance(node, str), key


def test_block_targets_product_sections_and_references_existing_assets():
    block = schema("pairs_well_with.liquid")
    assert block["target"] == "section"
    for asset in (block["javascript"], block["stylesheet"]):
        assert (EXTENSION / "assets" / asset).exists()
    assert_translated(block)


def test_block_settings_default_to_complementary_intent():
    settings = {s["id"]: s for s in schema("pairs_well_with.liquid")["settings"]}
    intent = settings["intent"]
    assert intent["default"] == "complementary"
    assert [o["value"] for o in intent["options"]] == ["complementary", "related"]


def test_block_asks_the_app_proxy_and_never_uses_inline_javascript():
    liquid = (EXTENSION / "blocks" / "pairs_well_with.liquid").read_text()
    assert "{% javascript %}" not in liquid
    settings = {s["id"]: s for s in schema("pairs_well_with.liquid")["settings"]}
    assert settings["proxy_path"]["default"] == "/apps/pairwell" and 'data-proxy-path="{{' in liquid
    script = (EXTENSION / "assets" / "pairs-well-with.js").read_text()
    assert "innerHTML" not in script  # model text is rendered as text, never as markup


def test_extension_sizes_are_within_shopify_limits():
    liquid = sum(p.stat().st_size for p in EXTENSION.rglob("*.liquid"))
    total = sum(p.stat().st_size for p in EXTENSION.rglob("*") if p.is_file())
    assert liquid < 100_000 and total < 10_000_000
    scripts = list((EXTENSION / "assets").glob("*.js"))
    assert {p.name for p in scripts} >= {"pairs-well-with.js", "assistant.js"}
    for script in scripts:
        assert script.stat().st_size < 10_000, script.name


# --- The support assistant (app embed) -------------------------------------------------------------------------

ASSISTANT = EXTENSION / "blocks" / "assistant.liquid"


def test_assistant_is_an_app_embed_on_every_page_with_its_assets_and_translated_settings():
    block = schema("assistant.liquid")
    assert block["target"] == "body" and "templates" not in block
    assert block["javascript"] == "assistant.js" and block["stylesheet"] == "assistant.css"
    for asset in (block["javascript"], block["stylesheet"]):
        assert (EXTENSION / "assets" / asset).exists()
    assert {"launcher_label", "greeting", "accent_color", "position"} <= {s["id"] for s in block["settings"]}
    assert_translated(block)


def test_assistant_asks_the_chat_proxy_under_the_locale_root_without_inline_javascript():
    liquid = ASSISTANT.read_text()
    markup = SCHEMA.sub("", liquid)
    assert "apps/pairwell/chat" in markup and "routes.root_url" in markup
    assert "{% javascript %}" not in liquid and "<script" not in markup.lower()
    assert re.search(r"\son[a-z]+\s*=", markup) is None  # no inline event handlers either


def test_assistant_script_reads_only_what_the_embed_renders():
    """Every `data-…` value and `[data-pairwell-…]` element the script uses is in the Liquid."""
    script = (EXTENSION / "assets" / "assistant.js").read_text()
    liquid = ASSISTANT.read_text()
    for name in set(re.findall(r"\bsay\.(\w+)", script)):
        assert "data-" + re.sub(r"([A-Z])", lambda m: "-" + m.group(1).lower(), name) in liquid, name
    for name in set(re.findall(r'\$\("([\w-]+)"\)', script)):
        assert f"data-pairwell-{name}" in liquid, name
    assert "pairwell-chat-session" in script and "sessionStorage" in script and "getRandomValues" in script
    assert "AbortController" in script and "textContent" in script


@pytest.mark.parametrize("script", sorted(p.name for p in (EXTENSION / "assets").glob("*.js")))
def test_storefront_scripts_never_turn_text_into_markup_or_code(script):
    source = (EXTENSION / "assets" / script).read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "new Function"):
        assert sink not in source, sink
    assert re.search(r"\beval\s*\(", source) is None
    assert re.search(r"set(Timeout|Interval)\(\s*[\"'`]", source) is None  # string timers are eval too


class Elements(HTMLParser):
    """The rendered elements' attributes, by tag, in document order."""

    def __init__(self, html: str):
        super().__init__()
        self.found: list[tuple[str, dict]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))

    def first(self, attribute: str) -> dict:
        return next(attrs for _, attrs in self.found if attribute in attrs)


def render_assistant(**context) -> Elements:
    liquid = pytest.importorskip("liquid", reason="python-liquid renders the embed's Liquid")
    template = liquid.Environment().from_string(SCHEMA.sub("", ASSISTANT.read_text()))
    settings = {"launcher_label": "Ask us", "heading": "How can we help?", "greeting": "Hi <there>",
                "placeholder": "Type", "accent_color": "#123456", "accent_text_color": "#ffffff", "position": "left"}
    return Elements(template.render(block={"settings": settings, "shopify_attributes": ""},
                                    shop={"currency": "EUR"}, **context))


@pytest.mark.parametrize("root, proxy, cart_js", [("/", "/apps/pairwell/chat", "/cart.js"),
                                                  ("/fr", "/fr/apps/pairwell/chat", "/fr/cart.js"),
                                                  ("/fr/", "/fr/apps/pairwell/chat", "/fr/cart.js")])
def test_assistant_renders_the_product_cart_and_locale_proxy_url(root, proxy, cart_js):
    cart_url = root.rstrip("/") + "/cart"
    page = render_assistant(product={"id": 7001}, routes={"root_url": root, "cart_url": cart_url},
                            cart={"items": [{"product_id": 31}, {"product_id": 42}, {"product_id": 31}]})
    chat = page.first("data-pairwell-chat")
    assert chat["data-proxy"] == proxy and chat["data-cart-url"] == cart_js
    assert chat["data-product-id"] == "7001"
    assert chat["data-cart"] == "31,42"
    assert chat["data-currency"] == "EUR" and chat["data-greeting"] == "Hi <there>"
    assert "pairwell-chat" in chat["class"].split() and "pairwell-chat--left" in chat["class"].split()


def test_assistant_off_a_product_page_with_an_empty_cart():
    page = render_assistant(routes={"root_url": "/", "cart_url": "/cart"}, cart={"items": []})
    chat = page.first("data-pairwell-chat")
    assert "data-product-id" not in chat and chat["data-cart"] == "" and chat["data-proxy"] == "/apps/pairwell/chat"


def test_assistant_markup_is_keyboard_and_screen_reader_ready():
    page = render_assistant(routes={"root_url": "/", "cart_url": "/cart"}, cart={"items": []})
    launcher, panel = page.first("data-pairwell-launcher"), page.first("data-pairwell-panel")
    assert ("button", launcher) in page.found and launcher["type"] == "button"
    assert launcher["aria-expanded"] == "false" and launcher["aria-controls"] == panel["id"]
    assert "hidden" in launcher and "hidden" in panel  # the script shows the launcher; the panel opens on demand
    assert panel["role"] == "dialog"
    heading = next(attrs for _, attrs in page.found if attrs.get("id") == panel["aria-labelledby"])
    assert ("h2", heading) in page.found
    assert page.first("data-pairwell-log")["aria-live"] == "polite"
    field = page.first("data-pairwell-input")
    assert field["maxlength"] == "2000"
    assert any(tag == "label" and attrs.get("for") == field["id"] for tag, attrs in page.found)
    assert page.first("data-pairwell-send")["type"] == "submit"


THEME_CHECK = ROOT / ".venv" / "theme-check" / "node_modules" / "@shopify" / "theme-check-node"


@pytest.mark.skipif(not THEME_CHECK.exists() or not shutil.which("node"),
                    reason="make test installs Shopify's theme-check-node into .venv/theme-check")
def test_shopify_theme_check_finds_no_offense():
    script = ("require(process.argv[1]).check(process.argv[2]).then(o => "
              "{ console.log(JSON.stringify(o.map(x => [x.check, x.message]))); })")
    result = subprocess.run(["node", "-e", script, str(THEME_CHECK), str(EXTENSION)], capture_output=True,
                            text=True, timeout=120, check=True)
    assert json.loads(result.stdout) == []


# --- The "pairs well with" block's Liquid, rendered ------------------------------------------------------------

@pytest.mark.parametrize("root, base", [("/", "/"), ("/fr", "/fr/"), ("/fr/", "/fr/")])
def test_block_builds_every_url_under_the_locale_root(root, base):
    """routes.root_url is "/" on the primary locale and "/fr" (no trailing slash) on others."""
    from sample_store.storefront import liquid_environment

    source = SCHEMA.sub("", (EXTENSION / "blocks" / "pairs_well_with.liquid").read_text())
    cart_url = root.rstrip("/") + "/cart"
    page = Elements(liquid_environment().from_string(source).render(
        block={"id": "b1", "settings": {"heading": "Pairs <well>", "limit": 3, "intent": "related",
                                      "proxy_path": "/tools/pairs"},
               "shopify_attributes": ""},
        product={"id": 7001}, shop={"currency": "USD"},
        routes={"root_url": root, "cart_url": cart_url, "cart_add_url": cart_url + "/add"},
        cart={"items": [{"product_id": 31}, {"product_id": 42}, {"product_id": 31}], "currency": {"iso_code": "EUR"}}))
    block = page.first("data-pairwell-block")
    assert block["data-proxy-path"] == "/tools/pairs" and block["data-root"] == base
    assert block["data-cart-add"] == f"{base}cart/add.js"
    assert block["data-product-id"] == "7001" and block["data-limit"] == "3" and block["data-cart"] == "31,42"
    assert block["data-intent"] == "related"
    assert block["data-currency"] == "EUR"  # the shopper's presentment currency, not the shop's
    assert "--pairwell-columns: 3" in block["style"]
    skeleton = [attrs for tag, attrs in page.found if "pairwell-block__item--skeleton" in attrs.get("class", "")]
    assert len(skeleton) == 3 and all(attrs["aria-hidden"] == "true" for attrs in skeleton)
    assert page.first("data-pairwell-status")["role"] == "status"
    listing = page.first("data-pairwell-list")  # named by the heading, and not a live region
    assert listing["aria-labelledby"] == "pairwell-heading-b1" and "aria-live" not in listing
    assert ("h2", {"id": "pairwell-heading-b1", "class": "pairwell-block__heading"}) in page.found
