"""A deterministic outdoor-gear store: products with variants, and orders built from real use-cases
("backpacking stove + fuel + matches + spork") with single-item orders, noise and a long tail."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal

# item type: (product type, price range, variant axis, variant values, what it is for)
ITEM_TYPES: dict[str, tuple[str, tuple[int, int], str, list[str], str]] = {
    "Backpacking Tent": ("Shelter", (180, 520), "Capacity", ["1P", "2P", "3P"], "a light, weatherproof shelter for nights on the trail"),
    "Sleeping Bag": ("Sleep", (120, 420), "Length", ["Regular", "Long"], "warmth down to freezing for three-season trips"),
    "Sleeping Pad": ("Sleep", (50, 200), "Size", ["Regular", "Wide"], "insulation and comfort between you and the ground"),
    "Camp Pillow": ("Sleep", (20, 50), "Color", ["Slate", "Ember"], "a packable pillow that inflates in three breaths"),
    "Camp Chair": ("Camp Furniture", (45, 140), "Color", ["Black", "Olive"], "a sturdy seat that packs down to a water-bottle size"),
    "Lantern": ("Lighting", (25, 80), "Color", ["Orange", "Grey"], "soft area light for the camp table"),
    "Tarp": ("Shelter", (60, 190), "Size", ["8x10", "10x12"], "rain cover for the camp kitchen"),
    "Backpacking Stove": ("Cooking", (40, 160), "Color", ["Titanium", "Black"], "boils a litre of water in under four minutes"),
    "Fuel Canister": ("Cooking", (6, 14), "Size", ["100 g", "230 g", "450 g"], "isobutane-propane fuel for canister stoves"),
    "Waterproof Matches": ("Cooking", (4, 9), "Pack", ["Single", "3-pack"], "storm-proof matches that light when wet"),
    "Titanium Spork": ("Cooking", (9, 18), "Color", ["Natural", "Blue"], "one utensil for every camp meal"),
    "Cook Pot": ("Cooking", (30, 90), "Volume", ["750 ml", "1.3 L"], "a light pot that nests a stove and a fuel canister"),
    "Camp Mug": ("Cooking", (12, 35), "Color", ["Red", "Sage"], "an insulated mug for coffee at sunrise"),
    "Dehydrated Meal": ("Food", (8, 14), "Flavor", ["Chili Mac", "Pad Thai", "Beef Stroganoff", "Breakfast Skillet"], "a hot meal that needs only boiling water"),
    "Butane Lighter": ("Cooking", (3, 10), "Color", ["Yellow", "Black"], "a refillable lighter for stoves and campfires"),
    "Water Filter": ("Hydration", (30, 120), "Type", ["Squeeze", "Pump"], "removes bacteria and protozoa from streams"),
    "Water Bottle": ("Hydration", (12, 45), "Size", ["750 ml", "1 L"], "a leak-proof bottle for the trail"),
    "Hydration Reservoir": ("Hydration", (28, 50), "Volume", ["2 L", "3 L"], "hands-free drinking from your pack"),
    "Purification Tablets": ("Hydration", (8, 16), "Count", ["30", "60"], "backup water treatment that weighs nothing"),
    "Daypack": ("Packs", (50, 160), "Volume", ["18 L", "24 L", "30 L"], "carries a day's water, food and layers"),
    "Backpacking Pack": ("Packs", (160, 380), "Torso", ["S", "M", "L"], "a framed pack for multi-day loads"),
    "Hiking Boots": ("Footwear", (120, 260), "Size", ["8", "9", "10", "11", "12"], "waterproof support over rough ground"),
    "Trail Runners": ("Footwear", (100, 170), "Size", ["8", "9", "10", "11", "12"], "light, grippy shoes for fast miles"),
    "Hiking Socks": ("Apparel", (14, 28), "Size", ["S", "M", "L"], "merino socks that prevent blisters"),
    "Trekking Poles": ("Hiking Gear", (60, 190), "Length", ["110-130 cm", "120-140 cm"], "save your knees on the descents"),
    "Gaiters": ("Hiking Gear", (30, 70), "Size", ["S/M", "L/XL"], "keep snow, mud and scree out of your boots"),
    "Headlamp": ("Lighting", (25, 90), "Color", ["Black", "Blue"], "hands-free light for camp and night hikes"),
    "AAA Batteries": ("Lighting", (6, 12), "Pack", ["4-pack", "8-pack"], "spare power for headlamps"),
    "Compass": ("Navigation", (15, 70), "Type", ["Baseplate", "Mirror"], "navigation that never runs out of battery"),
    "Topographic Map": ("Navigation", (10, 16), "Region", ["Sierra", "Rockies", "Cascades"], "waterproof map with contour lines"),
    "First Aid Kit": ("Safety", (20, 80), "Size", ["Day", "Weekend"], "treats blisters, cuts and sprains"),
    "Emergency Bivy": ("Safety", (15, 50), "Color", ["Orange"], "a reflective sack that keeps you warm in an emergency"),
    "Safety Whistle": ("Safety", (5, 12), "Color", ["Orange", "Yellow"], "a loud signal that carries farther than your voice"),
    "Rain Jacket": ("Apparel", (90, 300), "Size", ["S", "M", "L", "XL"], "a breathable shell for wet days"),
    "Fleece Jacket": ("Apparel", (60, 150), "Size", ["S", "M", "L", "XL"], "a warm mid-layer"),
    "Base Layer Top": ("Apparel", (40, 100), "Size", ["S", "M", "L", "XL"], "wicks sweat and stays warm when damp"),
    "Sun Hat": ("Apparel", (20, 45), "Size", ["S/M", "L/XL"], "wide-brim shade with UPF 50"),
    "Gloves": ("Apparel", (20, 70), "Size", ["S", "M", "L"], "warm, grippy hands in the cold"),
    "Climbing Harness": ("Climbing", (55, 130), "Size", ["S", "M", "L"], "a comfortable harness for the gym and the crag"),
    "Locking Carabiner": ("Climbing", (10, 25), "Color", ["Gold", "Blue"], "a screwgate carabiner for belaying"),
    "Belay Device": ("Climbing", (25, 110), "Color", ["Grey", "Red"], "assisted braking for safer belays"),
    "Chalk Bag": ("Climbing", (18, 40), "Color", ["Teal", "Black"], "keeps chalk at hand on the wall"),
    "Climbing Chalk": ("Climbing", (6, 15), "Size", ["100 g", "300 g"], "dry hands and a surer grip"),
    "Climbing Shoes": ("Climbing", (90, 190), "Size", ["38", "39", "40", "41", "42", "43"], "precise edging on small holds"),
    "Dynamic Rope": ("Climbing", (150, 280), "Length", ["60 m", "70 m"], "a 9.8 mm dynamic rope for sport climbing"),
    "Snowshoes": ("Winter", (130, 300), "Length", ["22 in", "25 in"], "float over deep snow"),
    "Microspikes": ("Winter", (50, 80), "Size", ["S", "M", "L"], "traction on icy trails"),
    "Insulated Jacket": ("Apparel", (150, 350), "Size", ["S", "M", "L", "XL"], "down warmth for cold camps"),
    "Ski Goggles": ("Winter", (60, 200), "Lens", ["Clear", "Smoke"], "clear vision in flat light"),
    "Hand Warmers": ("Winter", (2, 6), "Pack", ["Pair", "10-pair"], "ten hours of heat for your pockets"),
    "Fishing Rod": ("Fishing", (60, 220), "Length", ["6 ft", "7 ft"], "a packable rod for alpine lakes"),
    "Fishing Reel": ("Fishing", (40, 160), "Size", ["1000", "2500"], "a smooth spinning reel"),
    "Fishing Line": ("Fishing", (8, 20), "Strength", ["4 lb", "8 lb"], "low-visibility monofilament"),
    "Tackle Box": ("Fishing", (15, 45), "Size", ["Small", "Large"], "organised lures and hooks"),
    "Sunscreen": ("Sun & Bugs", (8, 18), "SPF", ["30", "50"], "sweat-resistant sun protection"),
    "Insect Repellent": ("Sun & Bugs", (7, 15), "Type", ["Spray", "Lotion"], "keeps mosquitoes and ticks away"),
    "Sunglasses": ("Sun & Bugs", (40, 180), "Lens", ["Grey", "Brown"], "polarised glare protection"),
}

CONSUMABLES = {"Fuel Canister", "Waterproof Matches", "Dehydrated Meal", "AAA Batteries", "Hand Warmers",
               "Purification Tablets", "Climbing Chalk", "Hiking Socks", "Fishing Line"}

# use-case: (weight, core item types (usually bought together), extras (sometimes added), winter?)
USE_CASES: dict[str, tuple[float, list[str], list[str], bool]] = {
    "backpacking stove kit": (10, ["Backpacking Stove", "Fuel Canister"], ["Waterproof Matches", "Titanium Spork", "Cook Pot", "Butane Lighter"], False),
    "overnight shelter": (8, ["Backpacking Tent", "Sleeping Bag"], ["Sleeping Pad", "Camp Pillow", "Tarp"], False),
    "sleep system": (5, ["Sleeping Pad", "Sleeping Bag"], ["Camp Pillow"], False),
    "trail water": (8, ["Water Filter", "Water Bottle"], ["Hydration Reservoir", "Purification Tablets"], False),
    "day hike": (10, ["Daypack", "Water Bottle"], ["Hiking Socks", "Trekking Poles", "Sunscreen", "Sun Hat", "First Aid Kit"], False),
    "new boots": (7, ["Hiking Boots", "Hiking Socks"], ["Gaiters", "Trekking Poles"], False),
    "trail running": (4, ["Trail Runners", "Hiking Socks"], ["Hydration Reservoir", "Sunglasses"], False),
    "after dark": (6, ["Headlamp", "AAA Batteries"], ["First Aid Kit", "Safety Whistle", "Emergency Bivy"], False),
    "navigation": (4, ["Compass", "Topographic Map"], ["Safety Whistle"], False),
    "camp dinner": (6, ["Dehydrated Meal", "Fuel Canister"], ["Camp Mug", "Titanium Spork", "Cook Pot"], False),
    "climbing starter": (7, ["Climbing Harness", "Climbing Shoes"], ["Locking Carabiner", "Belay Device", "Chalk Bag", "Climbing Chalk"], False),
    "belay kit": (4, ["Belay Device", "Locking Carabiner"], ["Dynamic Rope"], False),
    "chalk up": (3, ["Chalk Bag", "Climbing Chalk"], [], False),
    "winter hike": (6, ["Microspikes", "Insulated Jacket"], ["Hand Warmers", "Gloves", "Gaiters"], True),
    "snowshoeing": (4, ["Snowshoes", "Gaiters"], ["Trekking Poles", "Hand Warmers", "Ski Goggles"], True),
    "rain ready": (5, ["Rain Jacket", "Base Layer Top"], ["Fleece Jacket", "Backpacking Pack"], False),
    "layering": (4, ["Base Layer Top", "Fleece Jacket"], ["Insulated Jacket", "Gloves"], False),
    "fishing trip": (5, ["Fishing Rod", "Fishing Reel"], ["Fishing Line", "Tackle Box", "Sun Hat"], False),
    "sun and bugs": (5, ["Sunscreen", "Insect Repellent"], ["Sunglasses", "Sun Hat"], False),
    "camp comfort": (4, ["Camp Chair", "Lantern"], ["Tarp", "Camp Mug"], False),
    "thru-hike pack": (3, ["Backpacking Pack", "Sleeping Pad"], ["Trekking Poles", "Water Filter", "First Aid Kit"], False),
}

VENDORS = ["Ridgeline", "Alder & Ash", "Summit Supply", "Northfork", "Cairn Works", "Tamarack", "Bluebird Gear",
           "Granite Peak", "Switchback Co.", "Driftwood Outfitters"]
MODELS = ["Ultralight", "Trail", "Alpine", "Basecamp", "Venture", "Pro", "Classic", "Featherweight", "Explorer",
          "Ascent", "Nomad", "Scout"]
FEATURES = ["Tested through a full season in the Sierra.", "Backed by a lifetime warranty.",
            "Made with recycled materials.", "Packs small and weighs little.", "A staff favourite for years.",
            "Repairable in the field."]

PRODUCT_ID_BASE = 7_400_000_000_000
VARIANT_ID_BASE = 44_100_000_000_000
ORDER_ID_BASE = 5_900_000_000_000
LINE_ITEM_ID_BASE = 13_700_000_000_000
CUSTOMER_ID_BASE = 8_200_000_000_000
DEFAULT_END = datetime(2026, 11, 1, tzinfo=timezone.utc)


@dataclass
class SampleVariant:
    id: int
    title: str
    sku: str
    price: Decimal
    inventory_quantity: int

    @property
    def available_for_sale(self) -> bool:
        return self.inventory_quantity > 0


@dataclass
class SampleProduct:
    id: int
    handle: str
    title: str
    item_type: str
    product_type: str
    vendor: str
    description: str
    tags: list[str]
    status: str
    created_at: datetime
    updated_at: datetime
    variants: list[SampleVariant]
    variant_axis: str
    published: bool = True  # on the Online Store sales channel (its status may still be ACTIVE when it is not)

    @property
    def published_at(self) -> datetime | None:
        """REST `published_at`: when it went on the Online Store; None while it is not published there."""
        return self.created_at if self.published else None

    @property
    def on_storefront(self) -> bool:
        """Whether shoppers can reach it: ACTIVE and published to the Online Store."""
        return self.status == "ACTIVE" and self.published

    @property
    def total_inventory(self) -> int:
        return sum(v.inventory_quantity for v in self.variants)

    @property
    def image_url(self) -> str:
        return f"https://cdn.shopify.com/s/files/1/0000/0001/files/{self.handle}.jpg"


@dataclass
class SampleLine:
    id: int
    product_id: int
    variant_id: int
    quantity: int


@dataclass
class SampleOrder:
    id: int
    name: str
    created_at: datetime
    customer_id: int | None
    use_case: str
    lines: list[SampleLine] = field(default_factory=list)

    @property
    def updated_at(self) -> datetime:
        return self.created_at + timedelta(minutes=3)

    @property
    def fulfillment_status(self) -> str:
        """Shipped within two days of the order (the shop's DEFAULT_END is "now")."""
        age = DEFAULT_END - self.created_at
        return "FULFILLED" if age > timedelta(days=2) else "IN_PROGRESS" if age > timedelta(hours=12) else "UNFULFILLED"


@dataclass
class SampleStore:
    products: list[SampleProduct]
    orders: list[SampleOrder]

    @property
    def variant_count(self) -> int:
        return sum(len(p.variants) for p in self.products)

    @property
    def line_count(self) -> int:
        return sum(len(o.lines) for o in self.orders)

    def product(self, product_id: int) -> SampleProduct:
        return next(p for p in self.products if p.id == product_id)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).replace("--", "-").strip("-")


def _products(rng: random.Random, end: datetime) -> list[SampleProduct]:
    products: list[SampleProduct] = []
    variant_id = VARIANT_ID_BASE
    for item_type, (product_type, (low, high), axis, values, purpose) in ITEM_TYPES.items():
        models = rng.sample(MODELS, rng.randint(4, 7))
        for model in models:
            vendor = rng.choice(VENDORS)
            title = f"{vendor} {model} {item_type}"
            price = Decimal(rng.randint(low, high)) - Decimal("0.05")
            variants = []
            for value in values:
                variant_id += 1
                stock = 0 if rng.random() < 0.06 else rng.randint(1, 120)
                variants.append(SampleVariant(variant_id, value, f"{_slug(title)[:24].upper()}-{_slug(value).upper()}",
                                              price, stock))
            created = end - timedelta(days=rng.randint(200, 900))
            products.append(SampleProduct(
                id=PRODUCT_ID_BASE + len(products) + 1,
                handle=_slug(title),
                title=title,
                item_type=item_type,
                product_type=product_type,
                vendor=vendor,
                description=f"The {model} {item_type.lower()} from {vendor}: {purpose}. {rng.choice(FEATURES)}",
                tags=sorted({product_type.lower(), item_type.lower(), model.lower()}),
                status="ACTIVE" if rng.random() > 0.03 else rng.choice(["DRAFT", "ARCHIVED"]),
                created_at=created,
                updated_at=created + timedelta(days=rng.randint(0, 150), seconds=rng.randint(0, 86399)),
                variants=variants,
                variant_axis=axis,
            ))
    return products


def generate_store(seed: int = 7, orders: int = 3000, end: datetime = DEFAULT_END) -> SampleStore:
    """The same store for the same arguments, on every machine."""
    rng = random.Random(seed)
    products = _products(rng, end)
    by_type: dict[str, list[SampleProduct]] = {}
    for product in products:
        if product.status == "ACTIVE":
            by_type.setdefault(product.item_type, []).append(product)
    # Popularity within a type falls off like a power law: a few best-sellers and a long tail.
    popularity = {t: [1 / (rank + 1) ** 1.3 for rank in range(len(ps))] for t, ps in by_type.items()}
    names = list(USE_CASES)
    customers = [CUSTOMER_ID_BASE + i for i in range(1, max(orders // 3, 2))]
    sold: list[SampleOrder] = []
    line_id = LINE_ITEM_ID_BASE

    def pick(item_type: str) -> SampleProduct:
        return rng.choices(by_type[item_type], popularity[item_type])[0]

    for number in range(orders):
        created = end - timedelta(days=365 * (1 - (number + rng.random()) / orders), minutes=0)
        winter = created.month in (11, 12, 1, 2, 3)
        weights = [w * (2.5 if winter and USE_CASES[n][3] else 0.4 if USE_CASES[n][3] else 1)
                   for n, (w, *_rest) in ((n, USE_CASES[n]) for n in names)]
        use_case = rng.choices(names, weights)[0]
        _, core, extras, _ = USE_CASES[use_case]
        if rng.random() < 0.3:  # a single item from the use-case
            chosen = [rng.choice(core + extras)]
        else:
            chosen = [t for t in core if rng.random() < 0.85] + [t for t in extras if rng.random() < 0.35]
            chosen = chosen or [core[0]]
        if rng.random() < 0.15:  # noise: something unrelated
            chosen.append(rng.choice(list(by_type)))
        order = SampleOrder(
            id=ORDER_ID_BASE + number + 1,
            name=f"#{1001 + number}",
            created_at=created.replace(microsecond=0),
            customer_id=None if rng.random() < 0.1 else rng.choice(customers),
            use_case=use_case,
        )
        for item_type in dict.fromkeys(chosen):
            product = pick(item_type)
            variant = rng.choice(product.variants)
            quantity = rng.randint(1, 4) if item_type in CONSUMABLES else 1
            line_id += 1
            order.lines.append(SampleLine(line_id, product.id, variant.id, quantity))
        sold.append(order)
    return SampleStore(products=products, orders=sold)

# What the sample merchant wrote in Shopify's policy pages (served as shop.shopPolicies, HTML bodies) ...
SHOP_POLICIES = {
    "SHIPPING_POLICY": "<p>Orders ship within 1 business day from Denver. Standard shipping (3-5 days) is free over "
                       "$75, otherwise $6.95; express (1-2 days) is $19. We ship to the US and Canada.</p>",
    "REFUND_POLICY": "<p>Return unused gear within 60 days for a full refund; worn footwear within 30 days for store "
                     "credit. Start a return from your order page; return shipping is free.</p>",
}
# ... and what they entered in Pairwell's admin for the questions Shopify has no policy page for.
MERCHANT_POLICIES = {
    "invoices": "Every order confirmation email has a PDF invoice; for a VAT invoice reply to it with your company "
                "details.",
    "payment": "We accept Visa, Mastercard, American Express, PayPal, Shop Pay and our gift cards.",
    "discounts": "Sign up for the newsletter for 10% off your first order; codes cannot be combined.",
}
# ... and the support assistant's settings: where a handoff goes, and the one discount code it may name.
MERCHANT_ASSISTANT = {
    "enabled": True, "tone": "friendly", "handoff_contact": "help@pairwell-demo.example",
    "discount_codes": [{"code": "WELCOME10", "summary": "10% off a first order, for newsletter subscribers"}],
}
