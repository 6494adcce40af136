"""A read-news grammar: WSJ-like sentences from word lists and spoken-form numbers.

About 1,300 distinct words: companies, people, places, business nouns and verbs, numbers.

Sentences are lower-case words with no punctuation, the form the tokenizer and WER see.
"""

from __future__ import annotations

import random

COMPANIES = """acme brightline carver dalton eastgate fairmont granite harbor ironwood juniper
keystone lakeside meridian northstar oakmont pinecrest quantum redwood summit titan unity
vanguard westfield yardley zenith atlas beacon cobalt delta ember falcon glacier horizon
apex arbor ashford bedford belmont birch bristol cambridge canyon cardinal cascade cedar
chester clayton cliffside coastal colby compass concord cornell crescent crown cypress
dover eagle eastwood elgin elmwood emerald evergreen fairview foxboro franklin frontier
garfield gateway glenwood golden greenfield hamilton hampton harrison hartford hawthorne
heritage highland hillcrest hudson huntington imperial irving jefferson kensington kingsley
lancaster laurel liberty lincoln madison magnolia mansfield maple marlowe mayfield medford
monarch monroe newport norwood oakridge orchard oxford paramount parkside patriot pembroke
phoenix pioneer plymouth prescott princeton quincy raleigh raven regent richmond riverside
rockport royal salem sequoia sheffield sherwood silverton sterling stratford sycamore thornton
trident trinity valley venture victory walden waverly wellington whitman willow windsor
""".split()
SECTORS = """bank airline retailer automaker insurer utility chipmaker drugmaker brewer railroad
publisher builder refiner miner shipper lender broker grocer steelmaker software
telecom carrier hospital chemical media tobacco textile timber cement mortgage defense
aerospace semiconductor pharmaceutical biotech restaurant hotel casino cruise trucking
shipping energy pipeline mining gold copper oil gas coal solar wind water electric
appliance furniture apparel footwear toy cosmetics beverage dairy meat grain cotton sugar
coffee paper packaging glass plastics rubber tire engine computer printer network cable
satellite wireless entertainment studio newspaper magazine advertising consulting
accounting staffing security insurance brokerage savings thrift credit card leasing""".split()
THINGS = """shares profits sales earnings revenue prices orders costs exports imports wages
bonds stocks dividends deposits loans rates yields inventories margins
assets liabilities reserves holdings payments bills notes futures options contracts
shipments deliveries bookings sales volumes spending outlays receipts taxes tariffs fees
premiums claims losses writedowns charges gains returns bonuses salaries pensions
subsidies grants credits debts mortgages rents leases savings investments purchases
acquisitions layoffs hires openings closures sales stockpiles reserves output capacity""".split()
PEOPLE = """analysts investors traders economists officials executives regulators lawmakers
bankers workers shareholders consumers directors managers lawyers
accountants auditors brokers dealers lenders borrowers buyers sellers suppliers customers
clients employees unions farmers miners builders engineers scientists doctors teachers
students voters senators governors mayors judges prosecutors critics rivals partners
creditors bondholders landlords tenants retailers wholesalers exporters importers
strategists planners advisers consultants spokesmen spokeswomen""".split()
FIRST = """john mary james linda robert susan michael karen william nancy david lisa richard
betty joseph helen thomas sandra charles donna daniel carol paul ruth mark sharon donald
laura george sarah kenneth kimberly steven deborah edward jessica brian shirley ronald
cynthia anthony angela kevin melissa jason brenda jeffrey amy frank anna scott virginia
eric kathleen stephen pamela andrew martha raymond debra gregory amanda joshua stephanie
jerry carolyn dennis christine walter marie patrick janet peter catherine harold frances
douglas ann henry joyce carl diane arthur alice""".split()
SURNAMES = """smith johnson williams brown jones miller davis wilson anderson taylor thomas
moore martin jackson thompson white harris clark lewis robinson walker young allen king
wright scott green baker adams nelson hill campbell mitchell roberts carter phillips evans
turner torres parker collins edwards stewart morris murphy cook rogers morgan peterson
cooper reed bailey bell gomez kelly howard ward cox diaz richardson wood watson brooks
bennett gray james reyes cruz hughes price myers long foster sanders ross morales powell
sullivan russell ortiz jenkins gutierrez perry butler barnes fisher henderson coleman
simmons patterson jordan reynolds hamilton graham kim gonzales alexander ramos wallace
griffin west cole hayes chavez gibson bryant ellis stevens murray ford marshall owens
mcdonald harrison ruiz kennedy wells alvarez woods mendoza castillo olson webb washington
tucker freeman burns henry vasquez snyder simpson crawford jimenez porter mason shaw gordon
wagner hunter romero hicks dixon hunt palmer robertson black holmes stone meyer boyd mills
warren fox rose rice moreno schmidt patel ferguson nichols herrera medina ryan fernandez
weaver daniels stephens gardner payne kelley dunn pierce arnold tran spencer peters hawkins
grant hansen castro hoffman hart elliott cunningham knight bradley""".split()
TITLES = """chairman president chief executive treasurer secretary director analyst economist
spokesman governor senator minister commissioner partner founder trader strategist""".split()
UP = """rose climbed gained jumped increased advanced rallied surged edged soared rebounded
recovered grew expanded doubled tripled strengthened improved firmed swelled""".split()
DOWN = """fell dropped declined slipped eased tumbled slumped retreated sank plunged plummeted
weakened shrank contracted dipped slid skidded sagged faltered collapsed""".split()
SAY = """said reported announced noted warned expected predicted estimated argued suggested
disclosed confirmed denied insisted claimed explained added stated acknowledged conceded
projected forecast believed""".split()
ACTIONS = """approved rejected delayed proposed completed cancelled extended revised reviewed
blocked backed opposed signed launched unveiled postponed finalized negotiated challenged
defended questioned supported criticized praised restructured financed refinanced priced
underwrote settled appealed""".split()
TIME = ["yesterday", "today", "last week", "this week", "last month", "this quarter", "last year",
        "in march", "in april", "in june", "in october", "on monday", "on tuesday",
        "on wednesday", "on thursday", "on friday"]
PLACES = ["new york", "chicago", "boston", "london", "tokyo", "texas", "california", "ohio",
          "washington", "detroit", "houston", "atlanta", "denver", "seattle", "dallas", "miami",
          "phoenix", "philadelphia", "pittsburgh", "cleveland", "baltimore", "st louis", "new jersey",
          "minneapolis", "san francisco", "los angeles", "san diego", "portland", "milwaukee",
          "kansas city", "nashville", "memphis", "charlotte", "orlando", "tampa", "indianapolis",
          "columbus", "cincinnati", "sacramento", "las vegas", "salt lake city", "new orleans",
          "frankfurt", "paris", "zurich", "hong kong", "singapore", "seoul", "sydney", "toronto",
          "montreal", "mexico city", "brazil", "canada", "japan", "china", "germany", "france",
          "britain", "italy", "spain", "russia", "india", "europe", "asia", "latin america",
          "the midwest", "the west coast", "wall street", "the persian gulf", "the middle east"]
ADJ = """strong weak heavy light steady sharp modest slight record early late higher lower
quarterly annual federal foreign domestic new major large small big tough troubled
profitable volatile cautious aggressive hostile friendly generous costly cheap expensive
rising falling slowing growing stagnant robust sluggish brisk firm soft tight loose
unexpected surprising disappointing encouraging mixed flat uneven solid shaky fragile
healthy weaker stronger faster slower broader narrower longer shorter wider deeper
preliminary revised final proposed planned pending joint separate private public
national regional local global international corporate industrial commercial financial
economic political legal technical fiscal monetary""".split()
NOUNS = """market economy industry plan merger deal contract agreement proposal offer budget
report forecast outlook demand supply growth inflation trading session
recession recovery expansion slowdown downturn boom rally selloff crash correction
policy strategy program project venture partnership alliance takeover buyout bid
lawsuit settlement ruling verdict appeal investigation inquiry probe audit review
election campaign vote bill law regulation rule tax tariff quota embargo treaty
union strike walkout contract pension plant factory mill store branch office network
product service brand line model system platform technology patent license
currency dollar yen mark pound franc euro exchange index average benchmark
deficit surplus debt balance account statement filing prospectus offering issue
restructuring reorganization bankruptcy liquidation spinoff divestiture
shortage glut surplus backlog pipeline portfolio fund trust pool reserve
conference meeting hearing summit talks negotiations discussions dispute
economy employment unemployment productivity consumption production""".split()
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
    """One sentence of about 8-18 words."""
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
        lambda: f"{rng.choice(TITLES)} {rng.choice(FIRST)} {rng.choice(SURNAMES)} of "
                f"{company} {rng.choice(SAY)} the {rng.choice(SECTORS)} {rng.choice(ACTIONS)} "
                f"the {rng.choice(ADJ)} {rng.choice(NOUNS)}",
        lambda: f"{rng.choice(FIRST)} {rng.choice(SURNAMES)} a {rng.choice(SECTORS)} "
                f"{rng.choice(TITLES)} in {rng.choice(PLACES)} {rng.choice(SAY)} "
                f"{rng.choice(THINGS)} {rng.choice(UP + DOWN)} {_amount(rng)}",
        lambda: f"the {rng.choice(ADJ)} {rng.choice(NOUNS)} was {rng.choice(ACTIONS)} by "
                f"{rng.choice(PEOPLE)} in {rng.choice(PLACES)} {rng.choice(TIME)}",
    ]
    return " ".join(rng.choice(templates)().split())


def vocabulary() -> set[str]:
    words: set[str] = set()
    for group in (COMPANIES, SECTORS, THINGS, PEOPLE, FIRST, SURNAMES, TITLES, UP, DOWN, SAY,
                  ACTIONS, ADJ, NOUNS, ONES, TEENS, TENS, ["hundred", "percent", "point"]):
        words.update(group)
    for phrase in TIME + PLACES:
        words.update(phrase.split())
    return words
