"""The "pairs well with" block on the storefront preview, in Chromium: the real Liquid, CSS and JS, the App
Proxy signed as Shopify signs it, the app answering from the synced sample store."""

from __future__ import annotations

import re
import time
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from core.storage.models import StorefrontEvent, db
from sample_store.storefront import cents

BLOCK = "[data-pairwell-block]"
CARDS = f"{BLOCK} li.pairwell-block__item:not(.pairwell-block__item--skeleton)"
LOADED = f"{BLOCK}.is-loaded"
VIEWPORTS = {"desktop": {"width": 1280, "height": 900}, "mobile": {"width": 390, "height": 844}}

# Every layout shift the page makes, from the first paint (buffered), as Core Web Vitals counts them.
WATCH_SHIFTS = """
window.__shifts = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) if (!entry.hadRecentInput) window.__shifts.push(entry.value);
}).observe({ type: "layout-shift", buffered: true });
"""


def products(live_app, count: int, skip: int = 0):
    """Active products with stock, a different one for each test that stores events."""
    return [p for p in live_app.store.products if p.status == "ACTIVE" and p.total_inventory][skip:skip + count]


def open_product(page, storefront, product, locale=None):
    """Open a product page and return the recommendations answer the block received."""
    with page.expect_response(lambda r: "/apps/pairwell/recommendations" in r.url) as answer:
        page.goto(storefront.product_url(product, locale))
    page.wait_for_selector(LOADED)
    return answer.value.json()


def layout_shift(page) -> float:
    page.wait_for_timeout(200)  # let the observer deliver the last entries
    return page.evaluate("window.__shifts.reduce((a, b) => a + b, 0)")


@pytest.mark.parametrize("limit", [4, 2])
def test_block_shows_limit_cards_of_real_catalog_products(page, storefront, live_app, limit):
    storefront.block_settings = {"limit": limit}
    viewed = products(live_app, 1)[0]
    answer = open_product(page, storefront, viewed)
    cards = page.locator(CARDS)
    assert cards.count() == limit == len(answer["products"])
    assert page.get_by_role("heading", name="Pairs well with").is_visible()
    by_id = {p.id: p for p in live_app.store.products}
    for n, item in enumerate(answer["products"]):
        product = by_id[item["id"]]
        assert product.status == "ACTIVE" and product.id != viewed.id and item["title"] == product.title
        card = cards.nth(n)
        assert card.locator(".pairwell-block__title").inner_text() == product.title
        assert card.get_by_role("link").get_attribute("href") == f"/products/{product.handle}"
        expect(card.locator(".pairwell-block__price")).to_have_text(f"${float(item['price']):,.2f}")  # USD: the same
        assert card.get_by_role("button", name=f"Add to cart: {product.title}").is_visible()
        # the link is named by the title once (the photo is decorative), the photo a sized, lazy CDN rendition
        assert card.get_by_role("link", name=product.title, exact=True).count() == 1
        image = card.locator("img")
        assert image.get_attribute("alt") == "" and image.get_attribute("loading") == "lazy"
        assert (image.get_attribute("width"), image.get_attribute("height")) == ("360", "360")
        assert image.get_attribute("src") == f"{product.image_url}?width=360"
        assert image.get_attribute("srcset") == ", ".join(f"{product.image_url}?width={w} {w}w"
                                                          for w in (180, 270, 360, 540))
        assert image.get_attribute("sizes") == f"{round(card.bounding_box()['width'])}px"
    listing = page.get_by_role("list", name="Pairs well with")  # named by its heading, not a live region
    assert listing.get_by_role("listitem").count() == limit and listing.get_attribute("aria-live") is None
    assert page.get_by_role("button", name="Ask us").is_visible()  # the assistant's app embed is on the page


def test_skeleton_reserves_the_space_so_nothing_moves_when_products_arrive(page, storefront, live_app):
    page.add_init_script(WATCH_SHIFTS)
    storefront.proxy_delay = 0.8  # long enough to see the skeleton
    page.goto(storefront.product_url(products(live_app, 1, skip=1)[0]), wait_until="domcontentloaded")
    skeleton = page.locator(f"{BLOCK} .pairwell-block__item--skeleton")
    skeleton.first.wait_for()
    assert skeleton.count() == 4
    assert not page.get_by_role("heading", name="Pairs well with").is_visible()  # no heading over nothing yet
    block_before = page.locator(BLOCK).bounding_box()
    below_before = page.locator("[data-accordion]").bounding_box()
    page.wait_for_selector(LOADED)
    assert page.locator(CARDS).count() == 4
    assert page.locator(BLOCK).bounding_box() == block_before
    assert page.locator("[data-accordion]").bounding_box() == below_before
    assert layout_shift(page) < 0.001


@pytest.mark.parametrize("viewport", VIEWPORTS.values(), ids=VIEWPORTS.keys())
def test_quick_add_posts_the_cards_variant_and_the_cart_count_rises(page, storefront, live_app, viewport):
    """The variant the app chose goes to /cart/add.js with the theme's cart section, whose fresh HTML replaces
    the header's (Section Rendering API); the theme hears cart:refresh and cart:updated; screen readers hear it."""
    page.set_viewport_size(viewport)
    page.add_init_script("""window.__cart = []; ["cart:refresh", "cart:updated"].forEach((name) =>
      document.addEventListener(name, (e) => window.__cart.push([name, e.detail.productVariantId])));""")
    viewed = products(live_app, 1, skip=2)[0]
    answer = open_product(page, storefront, viewed)
    first = answer["products"][0]
    product = next(p for p in live_app.store.products if p.id == first["id"])
    assert first["variant_id"] == next(v.id for v in product.variants if v.inventory_quantity > 0)
    count = page.locator("[data-cart-count]")
    assert count.inner_text() == "0"
    with page.expect_request(lambda r: r.url.endswith("/cart/add.js") and r.method == "POST") as posted:
        page.locator(CARDS).first.get_by_role("button").click()
    assert posted.value.post_data_json == {"id": first["variant_id"], "quantity": 1, "sections": ["cart-icon-bubble"],
                                           "sections_url": f"/products/{viewed.handle}"}
    expect(page.locator(CARDS).first.get_by_role("button", name=f"Added: {product.title}")).to_have_text("Added")
    expect(count).to_have_text("1")
    expect(page.get_by_role("status")).to_have_text(f"{product.title}: Added")
    assert page.evaluate("window.__cart") == [["cart:refresh", first["variant_id"]],
                                              ["cart:updated", first["variant_id"]]]
    cart = page.request.get(f"{storefront.origin}/cart.js").json()
    assert [(line["variant_id"], line["quantity"]) for line in cart["items"]] == [(first["variant_id"], 1)]


def stored_events(live_app, viewed_id: int, expected: int, since) -> list[StorefrontEvent]:
    """The events about one viewed product, once `expected` of them have arrived (beacons are asynchronous)."""
    deadline = time.monotonic() + 10
    while True:
        live_app.flush_events()
        with live_app.app.app_context():
            rows = db.session.scalars(select(StorefrontEvent).where(
                StorefrontEvent.viewed_product_id == viewed_id, StorefrontEvent.created_at >= since)
                .order_by(StorefrontEvent.id)).all()
            db.session.expunge_all()
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_impressions_clicks_and_adds_to_cart_are_stored_with_their_source(page, storefront, live_app):
    from core.storage.models import utcnow

    since = utcnow().replace(microsecond=0)
    viewed = products(live_app, 1, skip=3)[0]
    answer = open_product(page, storefront, viewed)
    added, opened = answer["products"][0], answer["products"][1]
    cards = page.locator(CARDS)
    cards.nth(0).get_by_role("button").click()
    expect(page.locator("[data-cart-count]")).to_have_text("1")
    with page.expect_navigation():
        cards.nth(1).get_by_role("link").click()
    assert page.url == storefront.product_url(opened["handle"])
    page.wait_for_selector(f"{BLOCK}.is-loaded, {BLOCK}.is-empty, {BLOCK}[hidden]")
    with page.expect_navigation():  # the product form of the page the block led to counts for the block too
        page.locator("form[data-product-form] button[type=submit]").click()

    events = stored_events(live_app, viewed.id, 4, since)
    source = answer["source"]
    assert [(e.kind, e.product_id, e.source) for e in events] == [
        ("impression", None, source), ("add_to_cart", added["id"], source),
        ("click", opened["id"], source), ("add_to_cart", opened["id"], source)]
    assert events[0].shown == 4


@pytest.mark.parametrize("viewport", VIEWPORTS.values(), ids=VIEWPORTS.keys())
def test_keyboard_reaches_every_card_link_and_button_and_enter_opens_a_card(page, storefront, live_app, viewport):
    page.set_viewport_size(viewport)  # on phones the cards sit in a swipeable row: Tab scrolls them into view
    answer = open_product(page, storefront, products(live_app, 1, skip=4)[0])
    cut = page.locator(f"{CARDS} .pairwell-block__reason").evaluate_all(
        "reasons => reasons.map((r) => r.tagName === 'DETAILS')")
    wanted = [(kind, item["title"]) for item, reason_cut in zip(answer["products"], cut, strict=True)
              for kind in ("link", "reason", "button") if kind != "reason" or reason_cut]
    reached = []
    for _ in range(40):
        page.keyboard.press("Tab")
        focused = page.evaluate("""() => {
          const el = document.activeElement;
          const card = el.closest('.pairwell-block__item');
          const title = card && card.querySelector('.pairwell-block__title').textContent;
          const kind = el.tagName === 'A' ? 'link' : el.tagName === 'SUMMARY' ? 'reason' : 'button';
          return card && [kind, title];
        }""")
        if focused:
            reached.append(tuple(focused))
        elif reached:
            break
    assert reached == wanted
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # the focus ring stays
    focused, scroller = page.evaluate("""() => [document.activeElement.getBoundingClientRect().right,
                                               document.querySelector('[data-pairwell-list]').getBoundingClientRect().right]""")
    assert focused <= scroller + 1  # the last card's button was scrolled into sight

    link = page.locator(CARDS).nth(2).get_by_role("link")
    link.focus()
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url == storefront.product_url(answer["products"][2]["handle"])


@pytest.mark.allow_console_errors(r"status of 500")  # Chromium logs the failed request itself
@pytest.mark.parametrize("viewport", [{"width": 1280, "height": 900}, {"width": 390, "height": 844}],
                         ids=["desktop", "mobile"])
@pytest.mark.parametrize("mode", ["error", "empty", "hang"])
def test_a_failing_empty_or_hanging_proxy_leaves_the_product_page_intact(page, storefront, live_app, mode, viewport):
    storefront.proxy_mode = mode
    page.set_viewport_size(viewport)
    page.add_init_script(WATCH_SHIFTS)
    viewed = products(live_app, 1, skip=5)[0]
    page.goto(storefront.product_url(viewed), wait_until="domcontentloaded")
    below = page.locator("[data-accordion]").bounding_box()
    page.wait_for_selector(f"{BLOCK}.is-empty, {BLOCK}[hidden]", state="attached", timeout=6000)
    assert page.get_by_role("heading", name=viewed.title).is_visible()
    assert page.locator("form[data-product-form] button[type=submit]").is_visible()
    assert not page.get_by_role("heading", name="Pairs well with").is_visible()
    assert page.locator(CARDS).count() == 0
    assert layout_shift(page) < 0.001
    if page.locator(BLOCK).get_attribute("hidden") is None:  # in view: its blank box stays, nothing moved
        assert page.locator("[data-accordion]").bounding_box() == below


@pytest.mark.parametrize("viewport", VIEWPORTS.values(), ids=VIEWPORTS.keys())
@pytest.mark.parametrize("locale, proxy_path, setting", [
    ("fr", "/apps/pairwell", None),  # the default, under the locale root "/fr" (no trailing slash)
    ("fr", "/tools/pairs", "/tools/pairs/"),  # the merchant renamed prefix and subpath
    (None, "/apps/pairwell", "//evil.example/x"),  # not a path on this storefront: the default instead
], ids=["fr-default", "fr-renamed", "invalid-setting"])
def test_the_block_asks_the_proxy_under_the_locale_root_and_its_path_and_links_there(
        storefront, page, live_app, viewport, locale, proxy_path, setting):
    """(`storefront` before `page`: the page closes, and sends its last beacon, before the preview's proxy path
    is put back, or that beacon meets the old path's 404.)"""
    page.set_viewport_size(viewport)
    storefront.proxy_path = proxy_path
    if setting:
        storefront.block_settings = {"proxy_path": setting}
    viewed = products(live_app, 1, skip=6)[0]
    base = f"/{locale}" if locale else ""
    with page.expect_request(lambda r: "/recommendations?" in r.url) as asked:
        page.goto(storefront.product_url(viewed, locale))
    assert asked.value.url.startswith(f"{storefront.origin}{base}{proxy_path}/recommendations?")
    page.wait_for_selector(LOADED)
    hrefs = page.locator(CARDS).get_by_role("link").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert len(hrefs) == 4 and all(h.startswith(f"{base}/products/") for h in hrefs)
    deadline = time.monotonic() + 5  # the impression goes to the same proxy path (a beacon: asynchronous)
    while f"POST {proxy_path}/events" not in storefront.proxied and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"POST {proxy_path}/events" in storefront.proxied


def test_every_request_carries_the_intent_setting_and_one_stable_random_visitor(page, storefront, live_app):
    first, second = products(live_app, 2, skip=7)
    with page.expect_request(lambda r: "/apps/pairwell/recommendations" in r.url) as asked:
        page.goto(storefront.product_url(first))
    query = parse_qs(urlsplit(asked.value.url).query)
    visitor = query["visitor"][0]
    assert re.fullmatch(r"[0-9a-f]{32}", visitor) and query["intent"] == ["complementary"]
    assert page.evaluate("localStorage.getItem('pairwell:visitor')") == visitor
    storefront.block_settings = {"intent": "related"}
    with page.expect_request(lambda r: "/apps/pairwell/recommendations" in r.url) as asked:
        page.goto(storefront.product_url(second))
    query = parse_qs(urlsplit(asked.value.url).query)
    assert query["visitor"] == [visitor] and query["intent"] == ["related"]  # the same shopper, the merchant's intent
    page.wait_for_selector(LOADED)


@pytest.mark.parametrize("viewport", VIEWPORTS.values(), ids=VIEWPORTS.keys())
def test_a_shopper_browsing_in_euros_sees_the_euro_price_they_will_pay(page, storefront, live_app, viewport):
    page.set_viewport_size(viewport)
    viewed = products(live_app, 1, skip=8)[0]
    with page.expect_response(lambda r: "/apps/pairwell/recommendations" in r.url) as answered:
        page.goto(storefront.product_url(viewed) + "?currency=EUR")
    answer = answered.value.json()
    page.wait_for_selector(LOADED)
    assert page.evaluate("Shopify.currency.active") == "EUR"
    variants = {v.id: v for p in live_app.store.products for v in p.variants}
    cards = page.locator(CARDS)
    for n, item in enumerate(answer["products"]):
        presentment = cents(variants[item["variant_id"]].price, "EUR")  # what /products/<handle>.js says
        assert presentment != cents(Decimal(item["price"]))  # the app's shop-currency amount differs
        expect(cards.nth(n).locator(".pairwell-block__price")).to_have_text(f"€{presentment / 100:,.2f}")
    shown = cards.locator(".pairwell-block__price").all_inner_texts()
    assert not any("$" in text for text in shown)
    product_js = page.request.get(f"{storefront.origin}/products/{answer['products'][0]['handle']}.js").json()
    assert {v["id"]: v["price"] for v in product_js["variants"]}[answer["products"][0]["variant_id"]] == cents(
        variants[answer["products"][0]["variant_id"]].price, "EUR")


@pytest.mark.allow_console_errors(r"status of 404")
def test_without_the_storefronts_product_json_a_card_shows_no_price_rather_than_a_wrong_one(page, storefront, live_app):
    page.route("**/products/*.js", lambda route: route.fulfill(status=404, json={"status": 404}))
    open_product(page, storefront, products(live_app, 1, skip=9)[0])
    prices = page.locator(f"{CARDS} .pairwell-block__price:not(.is-pending)")
    expect(prices).to_have_count(4)
    assert prices.all_inner_texts() == [""] * 4


GEOMETRY = """() => {
  const list = document.querySelector('[data-pairwell-list]');
  const box = (el) => { const r = el.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const cards = [...list.children].filter((li) => li.offsetParent);
  return { list: box(list), cards: cards.map(box), scrolls: list.scrollWidth > list.clientWidth,
           page: document.documentElement.scrollWidth - window.innerWidth,
           title: parseFloat(getComputedStyle(cards[0].querySelector('.pairwell-block__title')).fontSize),
           body: parseFloat(getComputedStyle(document.body).fontSize) };
}"""


@pytest.mark.parametrize("theme_font", ["dawn", "default"], ids=["root-10px", "root-16px"])
def test_every_layout_setting_looks_deliberate_in_10px_and_16px_root_themes(page, storefront, live_app, theme_font):
    """Desktop: the merchant's columns, never more than products, fewer where a card would be under 7em wide;
    phones: one swipeable row of about 2.4 cards or two columns of full rows. Text follows the theme's body
    size whatever its root, cards never overlap and the page never scrolls sideways."""
    storefront.theme_font = theme_font
    viewed = products(live_app, 1, skip=10)[0]
    cases = [  # viewport, settings, columns seen, rows seen
        ("desktop", {"limit": 6, "columns_desktop": 3}, 3, 2),
        ("desktop", {"limit": 4, "columns_desktop": 6}, 4, 1),  # 4 products: 4 columns, no empty tracks
        ("desktop", {"limit": 2, "columns_desktop": 2}, 2, 1),
        ("mobile", {"limit": 4, "mobile_layout": "scroll"}, 4, 1),
        ("mobile", {"limit": 4, "mobile_layout": "grid"}, 2, 2),
        ("mobile", {"limit": 5, "mobile_layout": "grid"}, 2, 2),  # the odd fifth card would stand alone
    ]
    for viewport, settings, columns, rows in cases:
        page.set_viewport_size(VIEWPORTS[viewport])
        storefront.block_settings = settings
        page.goto(storefront.product_url(viewed))
        page.wait_for_selector(LOADED)
        seen = page.evaluate(GEOMETRY)
        case = f"{theme_font} {viewport} {settings}"
        lefts, tops = sorted({round(c[0]) for c in seen["cards"]}), sorted({round(c[1]) for c in seen["cards"]})
        assert (len(lefts), len(tops)) == (columns, rows), case
        widths = {round(c[2] - c[0]) for c in seen["cards"]}
        assert len(widths) == 1 and min(widths) >= 7 * seen["body"], case  # equal cards, 7em at least
        assert seen["page"] <= 0, case  # nothing pushes the page sideways
        assert seen["title"] == seen["body"] >= 14, case  # the theme's text size, not a 10 px root's
        for left, right in zip(seen["cards"], seen["cards"][1:]):
            assert left[2] <= right[0] or left[3] <= right[1], case  # no card runs into the next
        if settings.get("mobile_layout") == "scroll":
            list_width = seen["list"][2] - seen["list"][0]
            assert seen["scrolls"] and 2.2 <= list_width / widths.pop() <= 2.8, case
        else:
            assert not seen["scrolls"] and all(seen["list"][0] <= c[0] and c[2] <= seen["list"][2] + 0.5
                                               for c in seen["cards"]), case


HOSTILE = "<script>window.__pwned=1</script><img/src/onerror=window.__pwned=2>" + "Ultralight" * 30


@pytest.mark.parametrize("viewport", VIEWPORTS.values(), ids=VIEWPORTS.keys())
def test_a_hostile_300_character_title_stays_text_inside_its_card(page, storefront, live_app, viewport):
    page.set_viewport_size(viewport)
    title, reason = HOSTILE[:300], "Because" + "x" * 293

    def hostile(route):
        answer = route.fetch().json()
        answer["products"][0].update(title=title, reason=reason)
        route.fulfill(json=answer)

    page.route("**/apps/pairwell/recommendations?*", hostile)
    page.goto(storefront.product_url(products(live_app, 1, skip=11)[0]))
    page.wait_for_selector(LOADED)
    first = page.locator(CARDS).first
    assert first.locator(".pairwell-block__title").text_content() == title and " " not in title
    assert first.locator(".pairwell-block__reason").text_content() == reason
    assert page.evaluate("window.__pwned") is None and first.locator("script, .pairwell-block__title img").count() == 0
    boxes = page.locator(CARDS).evaluate_all("""cards => cards.map((card) => [card, ...card.querySelectorAll('*')]
      .map((el) => { const r = el.getBoundingClientRect(); return [r.left, r.right, el.scrollWidth > el.clientWidth
                     && getComputedStyle(el).overflowX === 'visible']; }))""")
    card_left, card_right, _ = boxes[0][0]
    for left, right, spills in boxes[0][1:]:  # nothing inside the card reaches beyond it
        assert card_left - 0.5 <= left and right <= card_right + 0.5 and not spills
    assert card_right <= boxes[1][0][0]  # nor into its neighbour
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]


def test_complementary_intent_shows_no_product_of_the_viewed_type_unless_shoppers_bought_both(
        page, storefront, live_app):
    """The server's rule for the default intent, seen on the storefront: a card of the viewed product's own type
    (a second stove) only where at least two orders hold both. `related` asks for substitutes too."""
    by_id = {p.id: p for p in live_app.store.products}
    orders = [{line.product_id for line in order.lines} for order in live_app.store.orders]
    same_type_seen = 0
    for viewed in products(live_app, 3, skip=12):
        answer = open_product(page, storefront, viewed)
        for item in answer["products"]:
            if by_id[item["id"]].product_type == viewed.product_type:
                assert sum(1 for o in orders if {viewed.id, item["id"]} <= o) >= 2, (viewed.title, item["title"])
        storefront.block_settings = {"intent": "related"}
        related = open_product(page, storefront, viewed)
        same_type_seen += sum(by_id[i["id"]].product_type == viewed.product_type for i in related["products"])
        storefront.block_settings = {}
    assert same_type_seen  # the related intent does bring substitutes


@pytest.mark.parametrize("viewport", VIEWPORTS.values(), ids=VIEWPORTS.keys())
def test_the_block_speaks_the_shoppers_language(page, storefront, live_app, viewport):
    """The quick-add button's words come from the extension's storefront locales (`| t`), in the route's language,
    and fit the card whole in every shipped locale: a short word shown, the whole action spoken."""
    page.set_viewport_size(viewport)
    product = products(live_app, 1)[0]
    for locale, shown, spoken in (("fr", "Ajouter", "Ajouter au panier"), (None, "Add to cart", "Add to cart")):
        open_product(page, storefront, product, locale=locale)
        card = page.locator(CARDS).first
        expect(card.get_by_role("button", name=re.compile(f"^{spoken}: "))).to_have_text(shown)
        cut = page.locator(f"{CARDS} .pairwell-block__add").evaluate_all(
            "buttons => buttons.filter((b) => b.scrollWidth > b.clientWidth).map((b) => b.textContent)")
        assert not cut, (locale, cut)


@pytest.mark.parametrize("viewport", VIEWPORTS.values(), ids=VIEWPORTS.keys())
def test_every_card_shows_its_whole_reason_or_opens_it_in_place(page, storefront, live_app, viewport):
    """A reason cut at two lines (a narrow card, "...; bought together in 12 orders") is a disclosure: a click or
    Enter shows it whole and the card grows around it, in every shipped locale; a reason that fits is plain text."""
    page.set_viewport_size(viewport)
    whole = "r => r.scrollHeight <= r.clientHeight + 1 && r.getBoundingClientRect().height > 0"
    opened = 0
    for locale in ("fr", None):
        for product in products(live_app, 2, skip=5):
            answer = open_product(page, storefront, product, locale=locale)
            for n, item in enumerate(answer["products"]):
                card = page.locator(CARDS).nth(n)
                reason = card.locator(".pairwell-block__reason")
                expect(reason).to_have_text(item["reason"])
                if reason.evaluate("r => r.tagName") != "DETAILS":
                    assert reason.evaluate(whole), item["reason"]
                    continue
                words = reason.locator("summary")
                assert not words.evaluate(whole)  # cut: hence the disclosure
                if n % 2:
                    words.focus()
                    page.keyboard.press("Enter")
                else:
                    words.click()
                expect(reason).to_have_attribute("open", "")
                assert words.evaluate(whole), item["reason"]
                assert card.evaluate("""card => {
                  const words = card.querySelector('.pairwell-block__reason').getBoundingClientRect();
                  const add = card.querySelector('.pairwell-block__add');
                  return !add || add.getBoundingClientRect().top >= words.bottom - 0.5;
                }""")  # the button moved down, not under the words
                words.click()
                expect(reason).not_to_have_attribute("open", "")
                opened += 1
    assert opened  # some reasons are longer than two lines at this width


@pytest.mark.allow_console_errors(r"Failed to load resource")
def test_the_preview_draws_placeholders_where_the_sample_stores_photos_do_not_exist(page, storefront, live_app):
    """The sample store's photos are not on Shopify's CDN: in `make demo` a browser gets errors for them, and the
    preview theme draws its placeholders instead of broken images."""
    page.route(re.compile(r"^https://cdn\.shopify\.com/"), lambda route: route.abort("internetdisconnected"))
    open_product(page, storefront, products(live_app, 1)[0])
    page.wait_for_function("""() => [...document.querySelectorAll('img')].length > 0 && [...document.querySelectorAll(
        'img')].every((img) => img.src.includes('/placeholder/') && img.complete && img.naturalWidth > 0)""",
                           timeout=10_000)
