"""The theme app extension is shaped as Shopify deploys it and stays within its limits."""

import json
import re
import shutil
import subprocess

import pytest

from core.config import ROOT

EXTENSION = ROOT / "extensions" / "pairwell"


def schema(block: str) -> dict:
    text = (EXTENSION / "blocks" / block).read_text()
    return json.loads(re.search(r"{% schema %}(.*){% endschema %}", text, re.S).group(1))


def test_block_targets_product_sections_and_references_existing_assets():
    block = schema("pairs_well_with.liquid")
    assert block["target"] == "section"
    for asset in (block["javascript"], block["stylesheet"]):
        assert (EXTENSION / "assets" / asset).exists()
    translations = json.loads((EXTENSION / "locales" / "en.default.schema.json").read_text())
    for key in [block["name"]] + [s["label"] for s in block["settings"]]:
        node = translations
        for part in key.removeprefix("t:").split("."):
            node = node[part]
        assert isinstance(node, str)


def test_block_asks_the_app_proxy_and_never_uses_inline_javascript():
    liquid = (EXTENSION / "blocks" / "pairs_well_with.liquid").read_text()
    assert "apps/pairwell/recommendations" in liquid and "{% javascript %}" not in liquid
    script = (EXTENSION / "assets" / "pairs-well-with.js").read_text()
    assert "innerHTML" not in script  # model text is rendered as text, never as markup


def test_extension_sizes_are_within_shopify_limits():
    liquid = sum(p.stat().st_size for p in EXTENSION.rglob("*.liquid"))
    total = sum(p.stat().st_size for p in EXTENSION.rglob("*") if p.is_file())
    assert liquid < 100_000 and total < 10_000_000
    assert (EXTENSION / "assets" / "pairs-well-with.js").stat().st_size < 10_000


THEME_CHECK = ROOT / ".venv" / "theme-check" / "node_modules" / "@shopify" / "theme-check-node"


@pytest.mark.skipif(not THEME_CHECK.exists() or not shutil.which("node"),
                    reason="make test installs Shopify's theme-check-node into .venv/theme-check")
def test_shopify_theme_check_finds_no_offense():
    script = ("require(process.argv[1]).check(process.argv[2]).then(o => "
              "{ console.log(JSON.stringify(o.map(x => [x.check, x.message]))); })")
    result = subprocess.run(["node", "-e", script, str(THEME_CHECK), str(EXTENSION)], capture_output=True,
                            text=True, timeout=120, check=True)
    assert json.loads(result.stdout) == []
