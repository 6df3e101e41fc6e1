"""The OCR sets' vocabulary, written for this project: scene templates (each has exactly one
double-quoted ``{text}``) and the words the rendered texts are built from."""

from __future__ import annotations

TEMPLATES: tuple[str, ...] = (
    'a wooden sign by a country road that reads "{text}"',
    'a glowing neon sign on a brick wall saying "{text}"',
    'a vintage travel poster with the headline "{text}"',
    'a white t-shirt printed with the words "{text}"',
    'a hardcover book titled "{text}" lying on a desk',
    'a storefront with "{text}" painted above the door',
    'a chalkboard menu outside a cafe that says "{text}"',
    'a coffee mug with "{text}" written on it',
    'a movie poster for a film called "{text}"',
    'a street banner hanging between two lampposts reading "{text}"',
    'a birthday cake decorated with icing that spells "{text}"',
    'graffiti on a subway wall that says "{text}"',
    'a highway billboard advertising "{text}"',
    'a handwritten note on a fridge that says "{text}"',
    'a protest sign held up in a crowd reading "{text}"',
    'a canvas tote bag with "{text}" printed in bold letters',
    'a vintage record album cover titled "{text}"',
    'a doormat in front of a blue door that says "{text}"',
    'a greeting card with "{text}" in gold letters',
    'a shop window with "{text}" in white lettering',
    'a glossy magazine cover with the headline "{text}"',
    'a striped beach towel with "{text}" stitched on it',
    'a road sign in the desert that says "{text}"',
    'a baseball cap embroidered with "{text}"',
    'a cinema marquee at night showing "{text}"',
    'a hand-painted sign at a farmers market reading "{text}"',
    'a sticky note on a laptop screen that says "{text}"',
    'a small plane skywriting "{text}" above the clouds',
    'a sandy beach with "{text}" written in the sand',
    'a cereal box with the brand name "{text}"',
    'a glass bottle with a label that reads "{text}"',
    'a leather-bound restaurant menu titled "{text}"',
    'a red neon sign reading "{text}" in a rainy alley',
    'a concert poster on a lamppost announcing "{text}"',
    'a grey hoodie with "{text}" across the chest',
    'a brass plaque on a stone wall engraved with "{text}"',
    'a sheet of paper in an old typewriter with "{text}" typed on it',
    'a price tag hanging from a jacket that says "{text}"',
    'a bakery storefront with a sign reading "{text}"',
    'a tattoo on a forearm that reads "{text}"',
    'a kite high in the sky with "{text}" painted on it',
    'a train station departure board showing "{text}"',
    'a library poster with the slogan "{text}"',
    'a snowy mountain trail sign that says "{text}"',
    'a food truck with "{text}" painted on its side',
    'a postcard of a lighthouse with the caption "{text}"',
    'a child\'s crayon drawing with "{text}" written at the top',
    'a lit-up arcade machine with "{text}" on its marquee',
)

# Stand-alone words (a sign's single word).
WORDS: tuple[str, ...] = (
    "open", "closed", "welcome", "exit", "sale", "bakery", "coffee", "books", "pizza", "tacos",
    "sushi", "noodles", "garden", "harbor", "station", "library", "museum", "theater", "market", "diner",
    "hotel", "motel", "pharmacy", "florist", "barber", "gallery", "studio", "workshop", "arcade", "cinema",
    "boutique", "laundry", "tavern", "bistro", "creamery", "brewery", "orchard", "vineyard", "lighthouse", "observatory",
    "dream", "believe", "imagine", "wander", "breathe", "create", "explore", "focus", "relax", "smile",
    "adventure", "freedom", "harmony", "serenity", "courage", "kindness", "patience", "wonder", "gratitude", "balance",
    "thunder", "lightning", "aurora", "horizon", "summit", "canyon", "glacier", "meadow", "prairie", "lagoon",
    "nebula", "comet", "eclipse", "galaxy", "orbit", "rocket", "satellite", "gravity", "quantum", "photon",
    "velvet", "marble", "copper", "silver", "golden", "crimson", "indigo", "amber", "emerald", "scarlet",
    "paradise", "sanctuary", "carnival", "festival", "jubilee", "fiesta", "bonanza", "odyssey", "voyage", "expedition",
    "hello", "goodbye", "thanks", "cheers", "hooray", "bravo", "encore", "jackpot", "eureka", "mayday",
    "midnight", "sunrise", "sunset", "twilight", "daybreak", "moonlight", "starlight", "daylight", "nightfall", "afterglow",
)

# Two-word texts: MODIFIERS × NOUNS ("fresh bread", "grand opening").
MODIFIERS: tuple[str, ...] = (
    "fresh", "hot", "cold", "grand", "little", "big", "happy", "lucky", "secret", "hidden",
    "golden", "silver", "blue", "red", "green", "wild", "quiet", "loud", "early", "late",
    "sunny", "rainy", "snowy", "windy", "cosmic", "electric", "magic", "royal", "urban", "rustic",
    "midnight", "morning", "evening", "weekend", "summer", "winter", "autumn", "spring", "ocean", "mountain",
    "river", "forest", "desert", "island", "city", "village", "open", "free", "daily", "local",
    "classic", "modern", "vintage", "tiny", "brave", "gentle", "sweet", "spicy", "crispy", "smoky",
)

NOUNS: tuple[str, ...] = (
    "bread", "coffee", "donuts", "pizza", "burgers", "noodles", "tacos", "pancakes", "lemonade", "ice cream",
    "books", "records", "flowers", "plants", "candles", "bikes", "shoes", "hats", "toys", "games",
    "market", "garden", "kitchen", "bakery", "diner", "cafe", "tavern", "studio", "gallery", "theater",
    "parking", "sale", "deals", "opening", "party", "festival", "concert", "parade", "picnic", "fair",
    "road", "trail", "bridge", "harbor", "station", "avenue", "lane", "corner", "square", "alley",
    "dreams", "vibes", "stories", "secrets", "wishes", "memories", "adventures", "journeys", "legends", "tales",
    "radio", "music", "rhythm", "jazz", "blues", "rock", "disco", "cinema", "comics", "poetry",
    "lights", "stars", "moon", "sun", "clouds", "waves", "mountains", "rivers", "forest", "skies",
)
