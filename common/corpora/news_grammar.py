"""A small read-news grammar: WSJ-like sentences from word lists and spoken-form numbers.

Sentences are lower-case words with no punctuation, the form the tokenizer and WER see.
"""

from __future__ import annotations

import random

COMPANIES = """acme brightline carver dalton eastgate fairmont granite harbor ironwood juniper
keystone lakeside meridian northstar oakmont pinecrest quantum redwood summit titan unity
vanguard westfield yardley zenith atlas beacon cobalt delta ember falcon glacier horizon
""".split()
SECTORS = """bank airline retailer automaker insurer utility chipmaker drugmaker brewer railroad
publisher builder refiner miner shipper lender broker grocer steelmaker software""".split()
THINGS = """shares profits sales earnings revenue prices orders costs exports imports wages
bonds stocks dividends deposits loans rates yields inventories margins""".split()
PEOPLE = """analysts investors traders economists officials executives regulators lawmakers
bankers workers shareholders consumers directors managers lawyers""".split()
UP = "rose climbed gained jumped increased advanced rallied surged edged".split()
DOWN = "fell dropped declined slipped eased tumbled slumped retreated sank".split()
SAY = "said reported announced noted warned expected predicted estimated argued".split()
TIME = ["yesterday", "today", "last week", "this week", "last month", "this quarter", "last year",
        "in march", "in april", "in june", "in october", "on monday", "on tuesday",
        "on wednesday", "on thursday", "on friday"]
PLACES = ["new york", "chicago", "boston", "london", "tokyo", "texas", "california", "ohio",
          "washington", "detroit", "houston", "atlanta", "denver", "seattle"]
ADJ = """strong weak heavy light steady sharp modest slight record early late higher lower
quarterly annual federal foreign domestic""".split()
NOUNS = """market economy industry plan merger deal contract agreement proposal offer budget
report forecast outlook demand supply growth inflation trading session""".split()
ONES = "zero one two three four five six seven eight nine".split()
TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """0..999 as spoken words."""
    if n < 10:
        return ONES[n]
    if n < 20:
        return TEENS[n - 10]
    if n < 100:
        return TENS[n // 10 - 2] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    rest = n % 100
    return ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_words(rest))


def _amount(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.4:
        return f"{number_words(rng.randint(1, 99))} percent"
    if kind < 0.6:
        return f"{number_words(rng.randint(1, 9))} point {ONES[rng.randint(0, 9)]} percent"
    scale = rng.choice(["million", "billion"])
    return f"{number_words(rng.randint(2, 999))} {scale} dollars"


def sentence(rng: random.Random) -> str:
    """One sentence of 4-20 words."""
    company = rng.choice(COMPANIES)
    templates = [
        lambda: f"{company} {rng.choice(SECTORS)} {rng.choice(THINGS)} {rng.choice(UP + DOWN)} "
                f"{_amount(rng)} {rng.choice(TIME)}",
        lambda: f"{rng.choice(PEOPLE)} {rng.choice(SAY)} the {rng.choice(ADJ)} {rng.choice(NOUNS)} "
                f"would {rng.choice(['help', 'hurt', 'lift', 'slow', 'support'])} "
                f"{rng.choice(THINGS)} in {rng.choice(PLACES)}",
        lambda: f"the {rng.choice(NOUNS)} in {rng.choice(PLACES)} was {rng.choice(ADJ)} "
                f"{rng.choice(TIME)} as {rng.choice(THINGS)} {rng.choice(UP + DOWN)}",
        lambda: f"{company} {rng.choice(SAY)} {rng.choice(['its', 'the'])} {rng.choice(THINGS)} "
                f"{rng.choice(UP + DOWN)} to {_amount(rng)}",
        lambda: f"{rng.choice(THINGS)} of {rng.choice(SECTORS)} companies {rng.choice(UP + DOWN)} "
                f"{rng.choice(TIME)} {rng.choice(PEOPLE)} {rng.choice(SAY)}",
        lambda: f"{rng.choice(PEOPLE)} in {rng.choice(PLACES)} {rng.choice(SAY)} {company} "
                f"{rng.choice(['agreed to buy', 'plans to sell', 'will acquire', 'may merge with'])} "
                f"{rng.choice(COMPANIES)} for {_amount(rng)}",
    ]
    return " ".join(rng.choice(templates)().split())


def vocabulary() -> set[str]:
    words: set[str] = set()
    for group in (COMPANIES, SECTORS, THINGS, PEOPLE, UP, DOWN, SAY, ADJ, NOUNS, ONES, TEENS, TENS):
        words.update(group)
    for phrase in TIME + PLACES:
        words.update(phrase.split())
    return words
