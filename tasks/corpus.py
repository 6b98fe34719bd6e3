"""The tiny world's language: a stochastic context-free grammar of short reviews.

Reviews of restaurants, movies, products, hotels, books and games, each with a polarity
(positive, negative, neutral or mixed). Sentiment words come from the VADER lexicon: a curated
list of review adjectives and verbs is intersected with `vader_lexicon.txt`, and each word's
polarity is the lexicon's (valence >= +1 positive, <= -1 negative); neutral adjectives are
words the lexicon does not know. The opening of a review (its first few words, never
polarised) is the RL prompt; what follows is what the policy writes.

The grammar is a plain dict `nonterminal -> [alternative, ...]`, an alternative being a list of
symbols (`<name>` for a nonterminal, anything else a word). Because it is a finite, acyclic CFG,
`grammar_bigrams()` computes exactly the set of word bigrams it can produce; the gold scorer
uses that set as its fluency check.
"""

from __future__ import annotations

import functools
import random
import re
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# Vocabulary (sentiment words filtered through the VADER lexicon)
# ---------------------------------------------------------------------------------------------

_POS_ADJ = [
    "amazing",
    "awesome",
    "beautiful",
    "brilliant",
    "charming",
    "cheerful",
    "clean",
    "comfortable",
    "delicious",
    "delightful",
    "elegant",
    "enjoyable",
    "excellent",
    "exciting",
    "fabulous",
    "fantastic",
    "friendly",
    "fun",
    "funny",
    "generous",
    "gorgeous",
    "great",
    "happy",
    "helpful",
    "impressive",
    "inspiring",
    "interesting",
    "lovely",
    "magnificent",
    "marvelous",
    "nice",
    "outstanding",
    "perfect",
    "pleasant",
    "remarkable",
    "satisfying",
    "smart",
    "splendid",
    "stunning",
    "superb",
    "sweet",
    "terrific",
    "thoughtful",
    "thrilling",
    "useful",
    "valuable",
    "welcoming",
    "wonderful",
    "adorable",
    "easy",
    "good",
    "neat",
    "ideal",
    "flawless",
    "gracious",
    "lively",
]
_NEG_ADJ = [
    "annoying",
    "awful",
    "bad",
    "boring",
    "broken",
    "crappy",
    "dirty",
    "disappointing",
    "disgusting",
    "dreadful",
    "dull",
    "flawed",
    "frustrating",
    "gross",
    "horrible",
    "lame",
    "lousy",
    "messy",
    "miserable",
    "nasty",
    "painful",
    "pathetic",
    "poor",
    "rude",
    "sad",
    "stupid",
    "terrible",
    "ugly",
    "unpleasant",
    "useless",
    "weak",
    "worthless",
    "faulty",
    "ridiculous",
    "careless",
    "depressing",
    "irritating",
    "hostile",
    "uncomfortable",
]
_NEU_ADJ = [
    "average",
    "ordinary",
    "standard",
    "typical",
    "small",
    "large",
    "quiet",
    "simple",
    "plain",
    "long",
    "short",
    "new",
    "expensive",
    "modern",
    "basic",
    "regular",
    "usual",
    "compact",
    "heavy",
    "dark",
    "loud",
    "busy",
    "crowded",
    "spicy",
    "salty",
    "predictable",
    "familiar",
    "traditional",
    "classic",
]
_POS_VERB = ["loved", "enjoyed", "liked", "adored", "appreciated", "admired"]
_NEG_VERB = ["hated", "disliked", "regretted", "despised", "loathed"]
_INTENS = ["very", "really", "extremely", "incredibly", "absolutely", "truly", "quite", "totally"]


@functools.lru_cache(maxsize=1)
def vader_lexicon() -> dict[str, float]:
    """word -> mean valence, from the `vader_lexicon.txt` that vaderSentiment ships."""
    import vaderSentiment

    path = Path(vaderSentiment.__file__).parent / "vader_lexicon.txt"
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            out[parts[0]] = float(parts[1])
    return out


@functools.lru_cache(maxsize=1)
def sentiment_words() -> dict[str, list[str]]:
    """The grammar's sentiment vocabulary, each word's polarity taken from the VADER lexicon."""
    lex = vader_lexicon()
    adj = _POS_ADJ + _NEG_ADJ
    return {
        "adj+": [w for w in adj if lex.get(w, 0.0) >= 1.0],
        "adj-": [w for w in adj if lex.get(w, 0.0) <= -1.0],
        "adj0": [w for w in _NEU_ADJ if w not in lex],
        "verb+": [w for w in _POS_VERB if lex.get(w, 0.0) >= 1.0],
        "verb-": [w for w in _NEG_VERB if lex.get(w, 0.0) <= -1.0],
    }


# ---------------------------------------------------------------------------------------------
# The grammar
# ---------------------------------------------------------------------------------------------

# domain -> (things reviewed, places/containers, aspects, openings). Openings are either a
# noun phrase subject ("NP") that a predicate continues, or a clause ending in "and" ("AND").
_DOMAINS: dict[str, dict[str, list[str]]] = {
    "food": {
        "item": [
            "pasta",
            "pizza",
            "burger",
            "soup",
            "salad",
            "steak",
            "curry",
            "dessert",
            "sushi",
            "coffee",
            "sandwich",
            "noodles",
            "tacos",
            "pancakes",
        ],
        "place": ["restaurant", "cafe", "diner", "bistro", "place", "bakery"],
        "aspect": [
            "service",
            "staff",
            "waiter",
            "atmosphere",
            "music",
            "menu",
            "portion",
            "price",
            "wait",
            "decor",
            "bread",
            "wine list",
        ],
        "NP": [
            "The <item> at this <place>",
            "This <place>",
            "The <aspect> at this <place>",
            "Our <item>",
            "The <item> here",
        ],
        "AND": [
            "I ordered the <item> and",
            "We went to this <place> for <occasion> and",
            "My <person> took me to this <place> and",
            "We tried the <item> and",
        ],
    },
    "movie": {
        "item": ["movie", "film", "documentary", "show", "series", "sequel", "thriller", "comedy"],
        "place": ["cinema", "theater"],
        "aspect": [
            "plot",
            "acting",
            "ending",
            "soundtrack",
            "script",
            "cast",
            "dialogue",
            "pacing",
            "story",
            "lead actor",
            "special effects",
            "camera work",
        ],
        "NP": [
            "This <item>",
            "The <aspect> of this <item>",
            "The new <item>",
            "The <aspect> in this <item>",
        ],
        "AND": [
            "I watched this <item> with my <person> and",
            "We saw this <item> at the <place> and",
            "I streamed this <item> <when> and",
        ],
    },
    "product": {
        "item": [
            "phone",
            "laptop",
            "blender",
            "headset",
            "camera",
            "vacuum",
            "kettle",
            "backpack",
            "charger",
            "keyboard",
            "speaker",
            "lamp",
            "mattress",
            "toaster",
            "watch",
        ],
        "place": ["store", "shop"],
        "aspect": [
            "battery",
            "screen",
            "design",
            "price",
            "build quality",
            "packaging",
            "manual",
            "sound",
            "handle",
            "delivery",
            "customer support",
            "cable",
        ],
        "NP": [
            "This <item>",
            "The <aspect> of this <item>",
            "The <aspect> on this <item>",
            "My new <item>",
        ],
        "AND": [
            "I bought this <item> for my <person> and",
            "I ordered this <item> <when> and",
            "I picked up this <item> at the <place> and",
        ],
    },
    "hotel": {
        "item": ["hotel", "resort", "inn", "hostel", "motel", "lodge"],
        "place": ["city", "beach", "town"],
        "aspect": [
            "room",
            "bed",
            "breakfast",
            "pool",
            "staff",
            "view",
            "location",
            "shower",
            "lobby",
            "wifi",
            "front desk",
        ],
        "NP": [
            "This <item>",
            "The <aspect> at this <item>",
            "Our room at this <item>",
            "The <item> near the <place>",
        ],
        "AND": [
            "We stayed at this <item> for <duration> and",
            "I booked this <item> for <occasion> and",
            "We checked into this <item> and",
        ],
    },
    "book": {
        "item": ["book", "novel", "cookbook", "memoir", "guide", "biography"],
        "place": ["library", "bookstore"],
        "aspect": [
            "writing",
            "characters",
            "ending",
            "cover",
            "chapters",
            "story",
            "prose",
            "main character",
            "first chapter",
        ],
        "NP": ["This <item>", "The <aspect> in this <item>", "The <aspect> of this <item>"],
        "AND": [
            "I read this <item> <when> and",
            "I borrowed this <item> from the <place> and",
            "My <person> gave me this <item> and",
        ],
    },
    "game": {
        "item": ["game", "puzzle", "board game", "video game", "card game", "racing game"],
        "place": ["store", "arcade"],
        "aspect": [
            "controls",
            "graphics",
            "levels",
            "music",
            "multiplayer",
            "story",
            "difficulty",
            "tutorial",
            "boss fights",
        ],
        "NP": ["This <item>", "The <aspect> in this <item>", "The <aspect> of this <item>"],
        "AND": [
            "I played this <item> for <duration> and",
            "We bought this <item> for <occasion> and",
            "My <person> and I played this <item> and",
        ],
    },
}

_SHARED: dict[str, list[str]] = {
    "person": [
        "wife",
        "husband",
        "friend",
        "sister",
        "brother",
        "mom",
        "dad",
        "son",
        "daughter",
        "kids",
        "partner",
    ],
    "occasion": [
        "dinner",
        "lunch",
        "a birthday",
        "our anniversary",
        "the weekend",
        "a trip",
        "the holidays",
    ],
    "when": ["last week", "last night", "yesterday", "last month", "over the weekend"],
    "duration": ["a week", "two nights", "three days", "a month", "an hour", "the weekend"],
    "intens": _INTENS,
    "conn": [
        "Also ,",
        "Honestly ,",
        "Overall ,",
        "On top of that ,",
        "And",
        "Plus ,",
        "In the end ,",
    ],
    "turn": ["But", "However ,", "Still ,", "On the other hand ,"],
    "linkv": ["was", "felt", "looked", "seemed", "turned out to be"],
}

# polarity-specific phrases; "<adj>"/"<verb>"/"<intens>" are resolved per polarity below
_POLAR: dict[str, dict[str, list[str]]] = {
    "+": {
        "close": [
            "I would recommend it",
            "I will be back",
            "Worth every penny",
            "I would definitely recommend it to anyone",
            "Five stars",
            "Highly recommended",
            "What a treat",
            "It was a pleasure",
        ],
        "neg_adj": ["not bad at all", "never boring"],
    },
    "-": {
        "close": [
            "I would not recommend it",
            "Avoid it",
            "What a waste of money",
            "Never again",
            "Two stars at best",
            "What a disappointment",
            "I want my money back",
        ],
        "neg_adj": ["not good at all", "not worth it", "never fun"],
    },
    "0": {
        "close": [
            "It did the job",
            "Nothing more to say",
            "Make of that what you will",
            "It is what it is",
            "I have no strong feelings about it",
        ],
        "neg_adj": ["not special", "nothing unusual"],
    },
}


def _adj_rules(p: str) -> list[str]:
    alts = [f"<adj{p}>", f"<adj{p}>", f"<intens> <adj{p}>", f"<adj{p}> and <adj{p}>"]
    return alts + _POLAR[p]["neg_adj"]


def _sentence_rules(d: str, p: str) -> list[str]:
    rules = [
        f"The <aspect:{d}> <linkv> <ADJ{p}>",
        f"The <aspect:{d}> <linkv> <ADJ{p}> and the <aspect:{d}> was <ADJ{p}>",
        f"I found the <aspect:{d}> <ADJ{p}>",
        "It was <ADJ" + p + ">",
        f"<CLOSE{p}>",
    ]
    if p != "0":
        rules += [f"I <verb{p}> the <aspect:{d}>", f"I <verb{p}> it"]
    else:
        rules += [f"The <aspect:{d}> was <adj0> but <adj0>"]
    return rules


@functools.lru_cache(maxsize=1)
def grammar() -> dict[str, list[list[str]]]:
    """nonterminal -> alternatives (symbol lists). The start symbol is `<REVIEW>`."""
    words = sentiment_words()
    g: dict[str, list[str]] = {}
    for name, ws in _SHARED.items():
        g[f"<{name}>"] = list(ws)
    for p in "+-0":
        g[f"<adj{p}>"] = list(words[f"adj{p}"])
        g[f"<ADJ{p}>"] = _adj_rules(p)
        g[f"<CLOSE{p}>"] = list(_POLAR[p]["close"])
    g["<verb+>"] = list(words["verb+"])
    g["<verb->"] = list(words["verb-"])
    reviews = []
    for d, spec in _DOMAINS.items():
        for key in ("item", "place", "aspect"):
            g[f"<{key}:{d}>"] = list(spec[key])
        g[f"<NP:{d}>"] = [
            s.replace("<item>", f"<item:{d}>")
            .replace("<place>", f"<place:{d}>")
            .replace("<aspect>", f"<aspect:{d}>")
            for s in spec["NP"]
        ]
        g[f"<AND:{d}>"] = [
            s.replace("<item>", f"<item:{d}>").replace("<place>", f"<place:{d}>")
            for s in spec["AND"]
        ]
        g[f"<OPEN:{d}>"] = [f"<NP:{d}>", f"<AND:{d}>"]
        for p in "+-0":
            g[f"<S{p}:{d}>"] = _sentence_rules(d, p)
            first = [
                f"<NP:{d}> <linkv> <ADJ{p}> .",
                f"<AND:{d}> it was <ADJ{p}> .",
                f"<AND:{d}> the <aspect:{d}> was <ADJ{p}> .",
            ]
            if p != "0":
                first += [f"<AND:{d}> I <verb{p}> it ."]
            else:
                first += [f"<AND:{d}> it was <adj0> ."]
            g[f"<FIRST{p}:{d}>"] = first
            g[f"<MORE{p}:{d}>"] = [f"<S{p}:{d}> .", f"<S{p}:{d}> . <conn> <S{p}:{d}> ."]
            g[f"<R{p}:{d}>"] = [f"<FIRST{p}:{d}> <MORE{p}:{d}>"]
        # mixed: one polarity, then a turn to the other
        g[f"<Rmix:{d}>"] = [f"<FIRST+:{d}> <turn> <S-:{d}> .", f"<FIRST-:{d}> <turn> <S+:{d}> ."]
        reviews += [f"<R+:{d}>", f"<R-:{d}>", f"<R0:{d}>", f"<Rmix:{d}>"]
    g["<REVIEW>"] = reviews
    # terminals are lower-case ("I" aside); `detokenize` capitalises sentence starts
    return {
        k: [[s if s.startswith("<") or s == "I" else s.lower() for s in alt.split()] for alt in v]
        for k, v in g.items()
    }


# Polarity mix of the corpus: the SFT policy must not already be positive.
POLARITY_WEIGHTS = {"+": 0.35, "-": 0.35, "0": 0.15, "mix": 0.15}


def _expand(sym: str, g: dict, rng: random.Random, out: list[str]) -> None:
    if sym in g:
        for s in rng.choice(g[sym]):
            _expand(s, g, rng, out)
    else:
        out.append(sym)


def detokenize(words: list[str]) -> str:
    text = " ".join(words)
    text = re.sub(r" ([.,!?])", r"\1", text)
    # capitalise the first letter of each sentence
    return re.sub(r"(^|[.!?] )([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)


def sample_review(rng: random.Random, domains: list[str] | None = None) -> tuple[str, str, str]:
    """One review: (opening prompt, full text, polarity); its domain is appended to
    `domains` when given."""
    g = grammar()
    domain = rng.choice(list(_DOMAINS))
    if domains is not None:
        domains.append(domain)
    pol = rng.choices(list(POLARITY_WEIGHTS), weights=list(POLARITY_WEIGHTS.values()))[0]
    start = f"<Rmix:{domain}>" if pol == "mix" else f"<R{pol}:{domain}>"
    # expand the opening separately so we know where the prompt ends
    alt = rng.choice(g[start])  # e.g. [<FIRST+:d>, <MORE+:d>]
    first_alt = rng.choice(g[alt[0]])  # e.g. [<AND:d>, it, was, <ADJ+>, .]
    opening: list[str] = []
    _expand(first_alt[0], g, rng, opening)
    words = list(opening)
    for s in first_alt[1:] + alt[1:]:
        _expand(s, g, rng, words)
    return detokenize(opening), detokenize(words), pol


def generate_reviews(n: int, seed: int, domains: list[str] | None = None
                     ) -> list[tuple[str, str, str]]:
    """n reviews of `seed`; their domains are appended to `domains` when given."""
    rng = random.Random(seed)
    return [sample_review(rng, domains) for _ in range(n)]


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


# ---------------------------------------------------------------------------------------------
# Exact bigram set of the grammar (first/last sets of an acyclic CFG)
# ---------------------------------------------------------------------------------------------

WORD_RE = re.compile(r"[a-z']+|[.,!?]")


def words_of(text: str) -> list[str]:
    """The gold scorer's word tokenisation: lower-cased words and punctuation marks."""
    return WORD_RE.findall(text.lower())


@functools.lru_cache(maxsize=1)
def grammar_bigrams() -> frozenset[tuple[str, str]]:
    """Every (word, next word) pair that some review of the grammar contains, exactly.

    Terminal phrases are split into lower-cased words (`words_of`). A review's sentences follow
    each other, so the bigram (last word of a review, first word of a review) is also allowed.
    """
    g = grammar()
    memo: dict[str, tuple[frozenset, frozenset, frozenset]] = {}

    def info(sym: str) -> tuple[frozenset, frozenset, frozenset]:
        """(first words, last words, internal bigrams); no symbol derives the empty string."""
        if sym in memo:
            return memo[sym]
        if sym not in g:
            ws = words_of(sym)
            res = (frozenset(ws[:1]), frozenset(ws[-1:]), frozenset(zip(ws, ws[1:])))
        else:
            first, last, bigrams = set(), set(), set()
            for alt in g[sym]:
                parts = [info(s) for s in alt]
                first |= parts[0][0]
                last |= parts[-1][1]
                for a, b in zip(parts, parts[1:]):
                    bigrams |= {(x, y) for x in a[1] for y in b[0]}
                for p in parts:
                    bigrams |= p[2]
            res = (frozenset(first), frozenset(last), frozenset(bigrams))
        memo[sym] = res
        return res

    first, last, bigrams = info("<REVIEW>")
    return frozenset(bigrams | {(x, y) for x in last for y in first})
