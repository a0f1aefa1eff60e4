"""Word tables of the retrieval probes: keys (cities, adjective-noun pairs) and word values.
The essay haystack avoids every word here (a test checks it)."""

CITIES: tuple[str, ...] = (
    "Tokyo", "Paris", "London", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Budapest",
    "Warsaw", "Lisbon", "Dublin", "Oslo", "Stockholm", "Helsinki", "Copenhagen", "Amsterdam",
    "Brussels", "Zurich", "Geneva", "Munich", "Hamburg", "Milan", "Naples", "Florence",
    "Venice", "Barcelona", "Seville", "Valencia", "Porto", "Athens", "Istanbul", "Ankara",
    "Cairo", "Alexandria", "Nairobi", "Lagos", "Accra", "Dakar", "Casablanca", "Marrakesh",
    "Tunis", "Algiers", "Addis Ababa", "Kampala", "Kigali", "Luanda", "Johannesburg",
    "Cape Town", "Durban", "Mumbai", "Delhi", "Kolkata", "Chennai", "Bangalore", "Hyderabad",
    "Karachi", "Lahore", "Dhaka", "Kathmandu", "Colombo", "Bangkok", "Hanoi", "Manila",
    "Jakarta", "Singapore", "Kuala Lumpur", "Seoul", "Busan", "Osaka", "Kyoto", "Beijing",
    "Shanghai", "Shenzhen", "Chengdu", "Taipei", "Hong Kong", "Ulaanbaatar", "Tashkent",
    "Tehran", "Baghdad", "Riyadh", "Dubai", "Doha", "Muscat", "Amman", "Beirut", "Sydney",
    "Melbourne", "Brisbane", "Perth", "Auckland", "Wellington", "Toronto", "Montreal",
    "Vancouver", "Ottawa", "Chicago", "Boston", "Seattle", "Denver", "Houston", "Miami",
    "Atlanta", "Phoenix", "Philadelphia", "San Francisco", "Los Angeles", "New Orleans",
    "Mexico City", "Guadalajara", "Havana", "Bogota", "Lima", "Quito", "Santiago",
    "Buenos Aires", "Montevideo", "Caracas", "Sao Paulo", "Rio de Janeiro", "Reykjavik",
    "Edinburgh", "Glasgow", "Manchester", "Krakow", "Riga", "Vilnius", "Tallinn", "Kyiv",
    "Bucharest", "Sofia", "Belgrade", "Zagreb",
)
KEY_ADJECTIVES: tuple[str, ...] = (
    "brave", "eager", "fancy", "jolly", "merry", "nimble", "proud", "rapid", "shiny", "silly",
    "swift", "tidy", "vast", "witty", "zesty", "bold", "clever", "daring", "fierce", "grand",
    "humble", "icy", "jumpy", "loyal", "mighty", "noble", "plucky", "rusty", "sturdy", "tiny",
    "vivid", "wild", "zany", "frosty", "sunny", "lucky", "snowy", "smooth", "bumpy", "fluffy",
)
KEY_NOUNS: tuple[str, ...] = (
    "falcon", "otter", "badger", "heron", "lynx", "marmot", "panda", "walrus", "beaver",
    "cobra", "dingo", "ferret", "gecko", "hyena", "ibis", "jackal", "koala", "lemur", "magpie",
    "newt", "ocelot", "puffin", "quail", "raven", "salmon", "tapir", "urchin", "vulture",
    "wombat", "zebra", "bison", "camel", "donkey", "egret", "finch", "gopher", "hornet",
    "iguana", "moose", "toucan",
)
VALUE_WORDS: tuple[str, ...] = (
    "anthem", "bramble", "cobalt", "dynamo", "fresco", "gadget", "igloo", "jigsaw", "kernel",
    "lagoon", "mosaic", "nectar", "oracle", "pebble", "quartz", "riddle", "saffron", "tundra",
    "velvet", "walnut", "xylophone", "zephyr", "almanac", "bonfire", "crimson", "drizzle",
    "eclipse", "fjord", "glacier", "hammock", "indigo", "juniper", "kayak", "meteor", "nomad",
    "obsidian", "paprika", "quiver", "rhubarb", "sequoia", "trombone", "ukulele", "vortex",
    "whistle", "zenith", "acorn", "biscuit", "dagger", "emerald", "falafel", "galaxy",
    "helmet", "ivory", "jasmine", "lilac", "marble", "nutmeg", "orchid", "parsley", "ribbon",
    "sapphire", "tulip", "utopia", "violin", "waffle", "yogurt", "zinnia", "avocado",
    "blossom", "carousel", "dandelion", "espresso", "flamingo", "gondola", "hazelnut",
    "jubilee", "kaleidoscope", "licorice", "magnolia", "nebula", "origami", "pinecone",
    "quasar", "rainbow", "snowflake", "tornado", "umbrella", "volcano", "wizard", "yearbook",
    "cinnamon", "harmonica", "lemonade", "mandolin", "peppermint", "tambourine", "vanilla",
    "watermelon", "broccoli", "cucumber", "pretzel",
)
