"""The embedded admin in Chromium, as a merchant uses it: every page renders (with data, and empty states where
there is none), Sync now and Train now start runs whose progress moves, deploy and roll back change the live
version, a rating (1: unrelated, gone from the block) and a pin change what the storefront preview's block
shows; every control is
reachable with the keyboard; no console errors.

The pages load App Bridge from the sample admin (`/app-bridge.js`), which hands out session tokens as the
Shopify admin does."""

from __future__ import annotations

import re
import time
from urllib.parse import urlencode

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from core.recommendations import serving
from core.storage.models import ModelVersion, Product, RecommendationRating, TrainingRun, db, utcnow

PAGES = {"/": "Home", "/recommendations": "Recommendations", "/models": "Models", "/schedule": "Schedule",
         "/experiment": "Experiment", "/assistant": "Assistant"}


@pytest.fixture(autouse=True)
def sample_app_bridge(live_app, tiny_base, tmp_path_factory):
    live_app.app.config.update(
        APP_BRIDGE_URL=f"{live_app.shopify.origin}/app-bridge.js", BASE_MODEL=str(tiny_base),
        PAIRWELL_ARTIFACTS=str(tmp_path_factory.mktemp("artifacts")),
        ADMIN_TRAINING={"epochs": 1, "batch_tokens": 512, "time_budget_seconds": 8, "eval_examples": 8})


def admin_url(live_app, path: str = "/") -> str:
    """As the admin loads the app: embedded, for the shop, without a token (the bounce page fetches one)."""
    return f"{live_app.url}{path}?" + urlencode({"shop": live_app.shop.domain, "embedded": "1", "host": "YWRtaW4"})


def test_every_page_renders_and_links_to_the_others(page, live_app):
    for path, title in PAGES.items():
        page.goto(admin_url(live_app, path))
        expect(page.locator("h1")).to_have_text(title)
        expect(page.locator(".app-name")).to_contain_text(live_app.shop.domain)
        expect(page).not_to_have_url(re.compile("id_token"))  # the one-minute token is not left in the address bar
        expect(page.locator("#banner")).to_be_hidden()
    page.goto(admin_url(live_app, "/models"))
    expect(page.locator(".empty").first).to_contain_text("No model trained yet")
    page.goto(admin_url(live_app, "/assistant"))
    expect(page.get_by_text("No conversations yet")).to_be_visible()
    page.goto(admin_url(live_app, "/experiment"))
    expect(page.locator("#arms-empty")).to_be_visible()
    page.get_by_role("link", name="Schedule").click()
    expect(page.locator("h1")).to_have_text("Schedule")


WIDER_THAN_THE_PAGE = """() => [...document.querySelectorAll("body *")].filter((el) => el.offsetParent !== null
    && el.getBoundingClientRect().right > document.documentElement.clientWidth + 1
    && !el.closest(".scroll-x")).map((el) => `${el.tagName.toLowerCase()}.${el.className}`).slice(0, 5)"""


@pytest.mark.parametrize("width", [360, 1280])
def test_every_page_fits_a_phone_and_a_laptop_without_sideways_scroll(page, live_app, width):
    """Merchants open the admin in the Shopify mobile app: nothing may push the page wider than the screen
    (a wide table scrolls inside its own box)."""
    page.set_viewport_size({"width": width, "height": 800})
    for path in PAGES:
        page.goto(admin_url(live_app, path))
        page.wait_for_load_state("networkidle")
        assert page.evaluate("document.documentElement.scrollWidth") <= width, (path, page.evaluate(
            WIDER_THAN_THE_PAGE))


def test_keyboard_reaches_every_control_of_every_page(page, live_app):
    for path in PAGES:
        page.goto(admin_url(live_app, path))
        page.wait_for_load_state("networkidle")
        controls = page.evaluate("""() => { const shown = [...document.querySelectorAll(
            'main button:not([hidden]):not([disabled]), main a[href], main input, main select, main textarea,'
            + ' main summary, nav a')].filter((el) => el.offsetParent !== null);
            shown.forEach((el, n) => { el.dataset.control = n; });
            return shown.length; }""")
        reached = set()
        for _ in range(controls + 15):
            page.keyboard.press("Tab")
            reached.add(page.evaluate("() => document.activeElement.dataset.control ?? null"))
        reached.discard(None)
        assert reached == {str(n) for n in range(controls)}, (path, controls, reached)


def test_sync_now_starts_a_run_and_its_progress_shows(page, live_app):
    page.goto(admin_url(live_app, "/"))
    rows = page.locator("#sync-runs tbody tr")
    before = rows.count()
    page.get_by_role("button", name="Sync now").click()
    expect(rows).to_have_count(min(before + 1, 5))
    expect(rows.first).to_have_attribute("data-status", "succeeded", timeout=30_000)
    expect(rows.first.locator("progress")).to_have_js_property("value", 1)
    expect(page.get_by_role("button", name="Sync now")).to_be_enabled()


def test_a_click_while_the_page_still_loads_its_scripts_is_not_lost(page, live_app):
    """Until admin.js and the page's own script have run, its buttons do nothing: the page stays inert until
    then, so a merchant's early click waits rather than vanishing."""
    def slowly(route):
        time.sleep(2)
        route.continue_()

    page.route("**/static/admin.js", slowly)
    page.goto(admin_url(live_app, "/"), wait_until="commit")
    page.get_by_role("button", name="Sync now").click()
    expect(page.locator("#status")).to_have_text("Sync started.", timeout=30_000)  # said by the click's handler
    expect(page.locator("#sync-runs tbody tr").first).to_have_attribute("data-status", "succeeded", timeout=60_000)


def test_train_now_runs_the_chain_with_live_progress_and_refuses_a_second_run(page, live_app):
    page.goto(admin_url(live_app, "/models"))
    page.get_by_role("button", name="Train now").click()
    expect(page.locator("#training-status")).to_contain_text("running", timeout=30_000)
    bar = page.locator("#training-progress")
    expect(bar).to_be_visible(timeout=60_000)
    page.wait_for_function("() => document.getElementById('training-progress').value > 0", timeout=60_000)
    with live_app.app.app_context():
        shop_token = live_app.shopify.session_token()
    refused = page.request.post(f"{live_app.url}/api/training-runs", headers={"Authorization": f"Bearer {shop_token}"})
    assert refused.status == 409 and "wait for it to finish" in refused.json()["message"]
    expect(page.locator("#loss-chart")).to_be_visible(timeout=60_000)
    # The run ends (verified, refused or deployed, whatever the tiny model earns) and the page shows its version.
    expect(page.locator("article.model")).to_have_count(1, timeout=180_000)
    with live_app.app.app_context():
        run = db.session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc())).first()
        assert run.status == "succeeded", run.error


def test_deploy_and_roll_back_change_the_live_version(page, live_app, tiny_gguf):
    with live_app.app.app_context():
        for model in db.session.scalars(select(ModelVersion)):
            model.status = "retired"
        runs = [TrainingRun(shop_id=live_app.shop.id, status="succeeded") for _ in range(2)]
        db.session.add_all(runs)
        db.session.flush()
        passed = {"gate": {"passed": True, "reason": "passed: tested", "hr@4": 0.5, "co-purchase hr@4": 0.4,
                           "label_mass": 0.97}}
        for version, run, status in ((11, runs[0], "deployed"), (12, runs[1], "verified")):
            db.session.add(ModelVersion(shop_id=live_app.shop.id, training_run_id=run.id, version=version,
                                        gguf_path=str(tiny_gguf), quantization="q8_0", size_bytes=1, sha256="0" * 64,
                                        base_model="tiny", status=status, metrics=passed,
                                        deployed_at=utcnow() if status == "deployed" else None))
        db.session.commit()

    def live() -> int:
        with live_app.app.app_context():
            return db.session.scalars(select(ModelVersion.version).where(ModelVersion.status == "deployed")).one()

    page.goto(admin_url(live_app, "/models"))
    page.get_by_role("button", name="Deploy v12").click()
    expect(page.locator("article[data-version='12'] .badge").first).to_have_text("live", timeout=60_000)
    assert live() == 12
    page.get_by_role("button", name="Roll back").click()
    expect(page.locator("article[data-version='11'] .badge").first).to_have_text("live", timeout=30_000)
    assert live() == 11


def test_a_rating_is_stored_and_a_pin_changes_the_preview_block(page, live_app, storefront):
    with live_app.app.app_context():
        shop = live_app.shop
        viewed = db.session.scalars(select(Product).where(Product.shop_id == shop.id, Product.status == "ACTIVE")
                                    .order_by(Product.id)).first()
        shelf = serving.load_shelf(db.session.merge(shop))
        pin = serving.ranking(shelf, viewed.id, [])[-1]
        pin_title = shelf.catalog[pin].title
        handle, viewed_id = viewed.handle, viewed.id
    page.goto(admin_url(live_app, "/recommendations") + f"&product={viewed_id}")
    cards = page.locator("#block-preview li")
    expect(cards).to_have_count(4)
    first = cards.first
    first.get_by_role("button", name="3 Pairs well").click()
    expect(first.get_by_role("button", name="3 Pairs well")).to_have_attribute("aria-pressed", "true")
    with live_app.app.app_context():
        assert db.session.scalars(select(RecommendationRating.rating)).all() == [3]
    unrelated = cards.nth(1).locator("h3").evaluate("(title) => title.firstChild.textContent.trim()")
    cards.nth(1).get_by_role("button", name="1 Unrelated").click()  # leaves the block at once
    expect(page.locator("#block-preview")).not_to_contain_text(unrelated)
    expect(cards).to_have_count(4)

    page.locator("#pin-select").select_option(str(pin))
    page.get_by_role("button", name="Pin", exact=True).click()
    expect(cards.first).to_contain_text(pin_title)
    expect(cards.first.locator(".badge")).to_have_text("pinned")
    expect(page.locator("#rules tbody tr")).to_have_count(1)

    shopper = page.context.new_page()
    shopper.goto(f"{storefront.origin}/products/{handle}")
    expect(shopper.locator(".pairwell-block__item").first).to_contain_text(pin_title)
    expect(shopper.locator("[data-pairwell-block]")).not_to_contain_text(unrelated)
    shopper.close()
    page.locator("#rules tbody tr").get_by_role("button").click()
    expect(page.locator("#rules tbody tr")).to_have_count(0)
    expect(cards.first).not_to_contain_text(pin_title)
