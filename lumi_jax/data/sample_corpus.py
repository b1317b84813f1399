"""The `sample` source: short stories in simple English, generated from a seeded grammar.

In the spirit of TinyStories: named characters, places, things and feelings, told in several
story shapes (something lost and found, a problem solved with help, a quarrel over sharing, a
brave discovery, a mistake owned up to, a plan spoiled by weather, an animal nursed back to
health, a race). Sentences join cause and effect ("because", "so"), and characters talk in
quotes. Every choice comes from one `random.Random(seed)`, so the corpus is the same for the same
seed and size on every machine. Generation runs at several MB per second, so the default corpus
needs no download and no wait.
"""

from __future__ import annotations

import dataclasses
import random

from lumi_jax.data.sources import Corpus, Document, SourceOptions
from lumi_jax.errors import UserError

DEFAULT_SIZE_MB = 4.0
MAX_SIZE_MB = 2000.0


@dataclasses.dataclass(frozen=True)
class Character:
    name: str
    kind: str  # "a little girl", "a small rabbit"
    he: str
    him: str
    his: str

    @property
    def He(self) -> str:  # noqa: N802 - reads like the sentence it builds
        return self.he.capitalize()

    @property
    def His(self) -> str:  # noqa: N802
        return self.his.capitalize()


GIRL_NAMES = ["Lily", "Mia", "Sara", "Anna", "Ella", "Zoe", "Lucy", "Nora", "Ruby", "Emma", "Maya",
              "Chloe", "Ivy", "Rosa", "Hana", "Amara", "Grace", "Molly", "Daisy", "Tess", "Kira", "Lena",
              "Pia", "Sofia", "Jade", "Alice", "Bella", "Clara", "Dora", "Eva", "Fatima", "Greta", "Hazel",
              "Iris", "Julia", "Kate", "Laila", "Mila", "Nina", "Olivia", "Penny", "Quinn", "Rita", "Stella",
              "Tara", "Uma", "Vera", "Wendy", "Yara", "Zara", "Ada", "Bea", "Cora", "Elsa", "Flora", "Gina",
              "Heidi", "Ines", "Juno", "Luna", "Maria", "Noor", "Opal", "Poppy", "Sadie", "Tilly", "Violet"]
BOY_NAMES = ["Tom", "Ben", "Sam", "Max", "Leo", "Jack", "Finn", "Omar", "Noah", "Eli", "Theo",
             "Hugo", "Ravi", "Jonas", "Kai", "Milo", "Oscar", "Pablo", "Dan", "Tim", "Luca", "Ezra",
             "Felix", "Arlo", "Yusuf", "Adam", "Bruno", "Carlos", "David", "Emil", "Frank", "George",
             "Henry", "Ian", "Jasper", "Kofi", "Liam", "Marco", "Nico", "Otto", "Peter", "Rafael", "Simon",
             "Toby", "Victor", "Walter", "Xavier", "Yuki", "Zack", "Abel", "Basil", "Caleb", "Dylan",
             "Ethan", "Gabe", "Harry", "Isaac", "Jamal", "Kevin", "Lucas", "Mateo", "Nathan", "Ollie", "Rory"]
GIRL_KINDS = ["a little girl", "a curious girl", "a happy girl", "a small girl", "a kind girl", "a brave girl",
              "a clever girl", "a quiet girl", "a cheerful girl", "a busy girl"]
BOY_KINDS = ["a little boy", "a curious boy", "a happy boy", "a small boy", "a kind boy", "a brave boy",
             "a clever boy", "a quiet boy", "a cheerful boy", "a busy boy"]
ANIMALS = ["rabbit", "dog", "cat", "bird", "fox", "bear", "duck", "mouse", "frog", "turtle", "owl",
           "squirrel", "puppy", "kitten", "pig", "goat", "lamb", "hedgehog", "deer", "otter", "beaver",
           "badger", "raccoon", "penguin", "seal", "whale", "dolphin", "lion", "tiger", "zebra", "giraffe",
           "elephant", "monkey", "panda", "koala", "kangaroo", "camel", "horse", "pony", "donkey", "cow",
           "chicken", "goose", "swan", "parrot", "robin", "sparrow", "crow", "snail", "ladybug", "butterfly",
           "bee", "ant", "spider", "crab", "octopus", "lizard", "dragon", "unicorn", "dinosaur"]
ANIMAL_ADJECTIVES = ["little", "small", "fluffy", "friendly", "shy", "clever", "sleepy", "fast", "brown",
                     "white", "spotted", "young", "grumpy", "silly", "gentle", "tiny", "striped", "hungry",
                     "playful", "wise", "noisy", "lazy", "proud", "clumsy"]
ANIMAL_NAMES = ["Pip", "Bo", "Coco", "Sunny", "Button", "Biscuit", "Pepper", "Bubbles", "Rusty", "Momo",
                "Nibbles", "Whiskers", "Patch", "Fluff", "Ziggy", "Honey", "Dot", "Tiko", "Puddle", "Mops",
                "Acorn", "Bramble", "Cookie", "Dusty", "Fudge", "Ginger", "Hopper", "Jelly", "Noodle",
                "Peanut", "Pickle", "Shadow", "Socks", "Sprout", "Thistle", "Toffee", "Waffle", "Zippy"]
GROWN_UPS = ["Mom", "Dad", "Grandma", "Grandpa", "the teacher", "Aunt Rose", "Uncle Joe", "the baker",
             "the farmer", "Nana", "Papa", "the old neighbor", "Mr. Green", "Mrs. Brown", "the librarian"]

COLORS = ["red", "blue", "green", "yellow", "pink", "purple", "orange", "white", "black", "golden",
          "silver", "brown", "gray", "striped", "spotty", "bright", "dark", "rainbow"]
SIZES = ["big", "small", "tiny", "shiny", "soft", "old", "new", "round", "long", "funny", "heavy",
         "light", "huge", "little", "fancy", "broken", "special", "magic", "wooden", "plastic", "woolly",
         "sparkly", "squeaky", "bumpy", "smooth", "warm"]
THINGS = ["ball", "kite", "hat", "toy boat", "book", "shell", "teddy bear", "drum", "box", "key",
          "map", "cup", "scarf", "bucket", "whistle", "marble", "crayon", "blanket", "bell", "sock",
          "toy car", "doll", "spoon", "feather", "rock", "ribbon", "puzzle", "jar", "basket", "umbrella",
          "backpack", "balloon", "bicycle", "boot", "bracelet", "brush", "button", "candle", "clock",
          "coin", "compass", "crown", "flute", "glove", "guitar", "helmet", "jacket", "kazoo", "lamp",
          "lantern", "mitten", "necklace", "notebook", "paintbrush", "pencil", "pillow", "robot", "rope",
          "shovel", "skateboard", "sled", "star sticker", "sweater", "telescope", "toy train", "trumpet",
          "wagon", "wand", "watch", "yo-yo", "pinwheel", "snow globe", "magnet", "tent", "violin"]
PLACES = {
    "the park": (["the slide", "the swings", "a bench", "the sandbox", "a big tree"], ["played on the swings", "ran on the grass", "fed the ducks"]),
    "the forest": (["a log", "a bush", "a hollow tree", "the tall grass", "a pile of leaves"], ["picked berries", "listened to the birds", "looked for mushrooms"]),
    "the beach": (["the sand", "a rock pool", "the waves", "a sand castle", "a beach towel"], ["built a sand castle", "looked for shells", "splashed in the water"]),
    "the garden": (["the flowers", "the fence", "the shed", "a flower pot", "the vegetable bed"], ["watered the flowers", "dug in the dirt", "watched the bees"]),
    "the farm": (["the barn", "the hay", "the pond", "the chicken house", "the tractor"], ["fed the chickens", "rode on the tractor", "picked apples"]),
    "the school": (["the classroom", "the playground", "the library", "a desk", "the music room"], ["painted a picture", "sang a song", "read a story"]),
    "the kitchen": (["the table", "the oven", "a drawer", "the sink", "a chair"], ["baked cookies", "made soup", "washed the dishes"]),
    "the river": (["the bridge", "the reeds", "a big stone", "the mud", "a little boat"], ["threw stones in the water", "watched the fish", "sailed a paper boat"]),
    "the hill": (["the top of the hill", "a rock", "the old gate", "a bush", "the path"], ["rolled down the grass", "flew a kite", "looked at the town below"]),
    "the town": (["the shop", "the bakery", "the market", "the fountain", "the post office"], ["bought bread", "looked at the shop windows", "visited the market"]),
    "the attic": (["an old chest", "a dusty box", "the window", "a corner", "a pile of clothes"], ["looked at old photos", "played dress up", "found old toys"]),
    "the zoo": (["the lion house", "the pond", "the gate", "the monkey tree", "a bench"], ["watched the monkeys", "saw the elephants", "fed the goats"]),
    "the meadow": (["a patch of daisies", "an old oak", "the stream", "a haystack", "a wooden fence"], ["chased butterflies", "made daisy chains", "rolled in the grass"]),
    "the library": (["a tall shelf", "the reading corner", "a soft chair", "the front desk", "a big globe"], ["read picture books", "listened to a story", "looked at maps"]),
    "the mountain": (["a cave", "a waterfall", "a pine tree", "a snowy rock", "the trail"], ["climbed the trail", "looked at the clouds", "drank from a cold stream"]),
    "the lake": (["the dock", "a canoe", "the lily pads", "the shore", "a willow tree"], ["went fishing", "skipped stones", "paddled a canoe"]),
    "the playground": (["the climbing frame", "the seesaw", "the merry-go-round", "a tunnel", "the monkey bars"], ["went down the slide", "played tag", "swung on the monkey bars"]),
    "the museum": (["a dinosaur skeleton", "a glass case", "a painting", "a statue", "the big hall"], ["looked at old bones", "saw a rocket", "drew the statues"]),
    "the station": (["the platform", "a bench", "the ticket office", "the clock tower", "a waiting train"], ["watched the trains", "waved at the driver", "counted the wagons"]),
    "the orchard": (["a pear tree", "a ladder", "a wheelbarrow", "the cherry trees", "a basket of plums"], ["picked cherries", "climbed a ladder", "made apple juice"]),
    "the island": (["a palm tree", "a sandy cove", "a lighthouse", "a tide pool", "an old boat"], ["looked for treasure", "watched the seagulls", "swam in the sea"]),
    "the circus": (["the big tent", "the ring", "a tall ladder", "the popcorn stand", "the clown car"], ["watched the acrobats", "laughed at the clowns", "ate popcorn"]),
    "the bedroom": (["the bed", "the toy box", "the closet", "a shelf", "the rug"], ["built a tower of blocks", "played with toys", "read a bedtime story"]),
}
# "in the attic", "on the hill", "at the park"
PREPOSITIONS = {"the forest": "in", "the garden": "in", "the school": "at", "the kitchen": "in",
                "the hill": "on", "the town": "in", "the attic": "in", "the meadow": "in",
                "the library": "in", "the mountain": "on", "the museum": "in", "the orchard": "in",
                "the island": "on", "the bedroom": "in", "the farm": "on", "the circus": "at"}
INDOOR_PLACES = ("the kitchen", "the attic", "the library", "the museum", "the bedroom", "the school",
                 "the station", "the circus")

FOODS = ["cookies", "apples", "bread", "soup", "cake", "pancakes", "berries", "carrots", "cheese",
         "sandwiches", "pie", "honey", "rice", "muffins", "grapes", "bananas", "cherries", "peaches",
         "pears", "plums", "oranges", "strawberries", "watermelon", "noodles", "pizza", "popcorn",
         "pretzels", "waffles", "yogurt", "lemonade", "cocoa", "biscuits", "cupcakes", "dumplings",
         "tomatoes", "peas", "corn", "potatoes", "jam", "nuts"]
FEELINGS_GOOD = ["happy", "glad", "proud", "excited", "thankful", "calm", "cheerful", "joyful",
                 "delighted", "hopeful", "brave", "peaceful", "amazed"]
FEELINGS_BAD = ["sad", "worried", "scared", "upset", "cross", "lonely", "nervous", "grumpy",
                "frightened", "unhappy", "gloomy", "jealous", "confused", "disappointed"]
WEATHER_BAD = [("it started to rain", "wet"), ("a strong wind began to blow", "cold"),
               ("dark clouds filled the sky", "grey"), ("it began to snow", "cold"),
               ("a storm came", "loud"), ("thick fog rolled in", "misty"), ("hail began to fall", "icy"),
               ("thunder rumbled over the hills", "gloomy")]
INDOOR_GAMES = ["built a fort with pillows", "played a board game", "drew pictures", "made a puppet show",
                "read books under a blanket", "baked a cake", "did a big puzzle", "played hide and seek",
                "made paper airplanes", "danced to music", "built a castle of cardboard", "played cards",
                "made masks out of paper", "told each other jokes", "painted stones", "sang silly songs"]
DAYS = ["One day", "One morning", "One sunny day", "One afternoon", "Once upon a time", "Long ago",
        "Last summer", "On a cold morning", "One windy day", "One evening", "On Saturday", "On Sunday",
        "One spring morning", "One autumn day", "One snowy day", "On a warm night", "Early one morning",
        "One rainy Monday", "In the summer holidays", "On a bright Tuesday"]
ENDINGS_GOOD = ["From that day on, {a} and {b} were best friends.", "{A} smiled. It was the best day ever.",
                "That night, {a} went to bed with a big smile.", "And they all lived happily together.",
                "{A} never forgot that day.", "The end.", "{A} and {b} could not wait to play again tomorrow.",
                "It had been a wonderful adventure.", "{A} hugged {b}, and they both giggled."]
SKIES = ["sky", "morning", "evening", "air"]
SKY_COLORS = ["blue and clear", "pink and gold", "grey and heavy", "full of fluffy clouds", "bright",
              "soft and warm", "cool and fresh", "dark and full of stars"]
NATURE = ["the leaves", "the birds", "the bees", "the waves", "the flowers", "the trees", "the grass",
          "the crickets", "the frogs", "the wind", "the stars", "the clouds", "the butterflies"]
NATURE_VERBS = ["danced in the breeze", "sang sweetly", "hummed softly", "sparkled", "swayed gently",
                "rustled", "whistled a tune", "glowed", "drifted slowly by", "buzzed all around",
                "made a happy sound", "shimmered in the light"]
SAY_STATEMENT = ["said", "shouted", "whispered", "cried", "called", "laughed", "replied", "explained",
                 "answered", "giggled", "sighed", "yelled", "murmured", "exclaimed"]
SPEED = ["quickly", "slowly", "carefully", "happily", "quietly", "bravely", "eagerly", "gently",
         "patiently", "calmly", "nervously", "boldly", "softly", "hopefully"]

GOALS = [  # (want to ..., what goes wrong, what fixes it, helper's skill)
    ("climb the big tree", "the first branch was too high", "gave {him} a boost", "tall"),
    ("fly {his} kite", "the string got stuck in a bush", "cut the string free and tied it again", "clever"),
    ("bake a cake for {grown}", "there were no eggs", "brought eggs from the farm", "kind"),
    ("build a tall tower of blocks", "the tower kept falling down", "showed {him} how to put the big blocks at the bottom", "clever"),
    ("cross the river", "the water was too deep", "found a log to use as a bridge", "strong"),
    ("reach the cookie jar", "the shelf was too high", "brought a little stool", "helpful"),
    ("finish the puzzle", "one piece was missing", "found the piece under the sofa", "sharp-eyed"),
    ("paint a picture of the sea", "there was no blue paint", "mixed some paint to make blue", "clever"),
    ("ride {his} new bike", "{he} kept falling over", "held the bike until {he} could ride alone", "patient"),
    ("sing in the school show", "{he} felt too shy to sing", "sang along with {him}", "kind"),
    ("plant a sunflower", "the ground was too hard to dig", "brought a shovel and softened the soil with water", "strong"),
    ("write a letter to {grown}", "{he} did not know how to spell some words", "spelled the hard words slowly", "smart"),
    ("catch a fish in the pond", "the fish swam away every time", "showed {him} how to sit very still", "patient"),
    ("make a snowman", "the snow was too dry to stick", "added a little water to the snow", "clever"),
    ("fix the broken wagon", "a wheel had come off", "found a nail and a hammer and fixed the wheel", "handy"),
    ("find the way home", "{he} had walked too far and everything looked strange", "followed the river back to town", "wise"),
    ("learn to whistle", "only air came out", "showed {him} how to shape {his} lips", "patient"),
    ("carry the heavy basket", "the basket was too heavy for one", "took the other handle", "strong"),
]


class StoryWriter:
    """Writes one story at a time; all randomness comes from `rng`."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def pick(self, options):
        return options[self.rng.randrange(len(options))]

    def child(self, exclude: set[str]) -> Character:
        for _ in range(100):
            if self.rng.random() < 0.5:
                name, kind, pronouns = self.pick(GIRL_NAMES), self.pick(GIRL_KINDS), ("she", "her", "her")
            else:
                name, kind, pronouns = self.pick(BOY_NAMES), self.pick(BOY_KINDS), ("he", "him", "his")
            if name not in exclude:
                return Character(name, kind, *pronouns)
        raise AssertionError("name lists too small")

    def animal(self, exclude: set[str]) -> Character:
        species = self.pick(ANIMALS)
        adjective = self.pick(ANIMAL_ADJECTIVES)
        name = self.pick([n for n in ANIMAL_NAMES if n not in exclude])
        pronouns = ("she", "her", "her") if self.rng.random() < 0.5 else ("he", "him", "his")
        return Character(name, f"{article(adjective)} {adjective} {species}", *pronouns)

    def character(self, exclude: set[str]) -> Character:
        return self.animal(exclude) if self.rng.random() < 0.35 else self.child(exclude)

    def cast(self) -> tuple[Character, Character]:
        a = self.character(set())
        b = self.character({a.name})
        return a, b

    def thing(self) -> str:
        adjective = self.pick(COLORS) if self.rng.random() < 0.6 else self.pick(SIZES)
        return f"{adjective} {self.pick(THINGS)}"

    def place(self, outdoor: bool = False) -> tuple[str, list[str], list[str]]:
        names = [p for p in PLACES if p not in INDOOR_PLACES] if outdoor else list(PLACES)
        name = self.pick(names)
        spots, activities = PLACES[name]
        return name, spots, activities

    def say(self, who: Character | str, words: str) -> str:
        name = who if isinstance(who, str) else who.name
        verb = "asked" if words.endswith("?") else self.pick(SAY_STATEMENT)
        if self.rng.random() < 0.5:
            quoted = words[:-1] + "," if words.endswith(".") else words  # "I will go," said Tom.
            return f'"{quoted}" {verb} {name}.'
        return f'{capitalised(name)} {verb}, "{words}"'

    def opening(self, a: Character) -> str:
        day = self.pick(DAYS)
        if day in ("Once upon a time", "Long ago"):
            return f"{day}, there was {a.kind} named {a.name}."
        return f"{day}, {a.kind} named {a.name} {self.pick(['woke up early', 'went outside', 'was ready to play', 'looked out of the window'])}."

    def ending(self, a: Character, b: Character) -> str:
        return self.pick(ENDINGS_GOOD).format(a=a.name, b=b.name, A=a.name)

    # --- story shapes ----------------------------------------------------------------------

    def lost_and_found(self) -> list[str]:
        a, b = self.cast()
        thing = self.thing()
        place, spots, activities = self.place()
        first, second = self.rng.sample(spots, 2)
        feeling = self.pick(FEELINGS_BAD)
        return [
            self.opening(a),
            f"{a.He} had {article(thing)} {thing}. " + self.pick([f"{a.He} loved it very much.",
                                                                f"It was {a.his} favorite thing in the world.",
                                                                f"{a.He} took it everywhere.",
                                                                f"{grown_up_gift(self, a)}"]),
            f"{a.He} took the {thing} to {place} and {self.pick(activities)}.",
            f"But when it was time to go home, the {thing} was gone! {a.name} felt {feeling}.",
            self.say(a, f"Where is my {thing}?"),
            f"{a.He} looked near {first}, but it was not there.",
            f"Then {b.name}, {b.kind}, came by. {self.say(b, 'Why are you ' + feeling + '?')}",
            f"{a.name} told {b.him} about the {thing}. " + self.say(b, "I will help you look!"),
            f"They looked {self.pick(SPEED)} everywhere. At last, {b.name} saw something {thing.split()[0]} near {second}.",
            self.say(a, f"My {thing}! Thank you, {b.name}!"),
            f"{a.name} was so {self.pick(FEELINGS_GOOD)} because {b.name} had helped {a.him}.",
            self.pick([f"{a.He} learned that it is good to ask friends for help.",
                       f"After that, {a.name} always kept the {thing} in a safe place.",
                       self.ending(a, b)]),
        ]

    def problem_and_help(self) -> list[str]:
        a, b = self.cast()
        want, problem, fix, skill = self.pick(GOALS)
        grown = self.pick(GROWN_UPS)
        fill = {"he": a.he, "him": a.him, "his": a.his, "grown": grown}
        want, problem, fix = want.format(**fill), problem.format(**fill), fix.format(**fill)
        return [
            self.opening(a),
            f"{a.He} wanted to {want}.",
            f"{a.He} tried and tried, but {problem}. So {a.name} sat down and felt {self.pick(FEELINGS_BAD)}.",
            self.say(a, self.pick(["I can not do it!", "It is too hard!", "What can I do?", "I give up."])),
            f"Just then, {b.name} came along. {b.name} was {article(b.kind.split()[-1])} {b.kind.split()[-1]} who was very {skill}.",
            self.say(b, self.pick(["Do not be sad. Let me help you.", "I have an idea!", "We can do it together."])),
            f"{b.name} {fix}.",
            f"Because {b.name} helped, {a.name} was able to {want}.",
            self.say(a, self.pick(["We did it!", f"Thank you, {b.name}!", "Hooray!", "That was fun!"])),
            f"{a.name} and {b.name} {self.pick(['laughed together', 'shared some ' + self.pick(FOODS), 'played until the sun went down', 'gave each other a big hug'])}.",
            self.pick([f"{a.name} learned that a hard job is easy with a friend.", self.ending(a, b)]),
        ]

    def sharing(self) -> list[str]:
        a, b = self.cast()
        thing = self.thing()
        place, _, activities = self.place()
        grown = self.pick(GROWN_UPS)
        return [
            f"{self.pick(DAYS)}, {a.name} and {b.name} went to {place}.",
            f"{a.name} found {article(thing)} {thing}. " + self.say(a, f"Look at this {thing.split()[-1]}! It is mine!"),
            self.say(b, "No, I want to play with it too!"),
            f"They both pulled the {thing}. They pulled so hard that {self.pick(['they both fell down', 'it flew into the air', 'it almost broke'])}.",
            f"{a.name} was {self.pick(['angry', 'cross', 'upset'])}, and {b.name} started to cry.",
            f"{capitalised(grown)} saw them and came over.",
            self.say(grown, self.pick(["Why don't you take turns?", "You can share it. Then you can both have fun.",
                                "If you share, you can play together."])),
            f"So {a.name} played with the {thing} first, and then {b.name} had a turn.",
            f"Soon they found a game they could play together, and they {self.pick(activities)}.",
            f"Sharing made the game more fun, because now {a.name} had a friend to play with.",
            self.ending(a, b),
        ]

    def discovery(self) -> list[str]:
        a, b = self.cast()
        place, spots, _ = self.place()
        spot = self.pick(spots)
        mystery, reveal = self.pick([
            ("a little door", "a tiny room full of old toys"),
            ("a shiny stone", "a stone that glowed like a star"),
            ("a strange noise", f"{article(self.pick(ANIMALS))} {self.pick(ANIMALS)} who was stuck and wanted to get out"),
            ("a big box", "a box full of books and pictures"),
            ("a dark hole", "a warm home where baby rabbits were sleeping"),
            ("a map", "a path that led to a field of flowers"),
            ("a bright light", "a lamp that someone had left on"),
        ])
        return [
            self.opening(a),
            f"{a.He} went to {place} with {a.his} friend {b.name}.",
            f"Near {spot}, they found {mystery}.",
            self.say(b, self.pick(["What is that?", "Should we go closer?", "I am scared. Are you?"])),
            f"{a.name} felt a little {self.pick(['scared', 'nervous', 'worried'])}, but {a.he} also wanted to know.",
            self.say(a, self.pick(["Let's be brave.", "We can look together.", "Hold my hand."])),
            f"So they walked {self.pick(SPEED)} to see it. It was {reveal}!",
            f"They were {self.pick(FEELINGS_GOOD)}, because being brave had shown them something wonderful.",
            self.pick([f"They ran home to tell {self.pick(GROWN_UPS)} all about it.", self.ending(a, b)]),
        ]

    def mistake(self) -> list[str]:
        a, _ = self.cast()
        grown = self.pick(GROWN_UPS)
        accident, fix = self.pick([
            ("knocked over a vase of flowers", "picked up the flowers and put them in a new jar"),
            ("spilled milk on the floor", "got a cloth and cleaned it up"),
            ("broke a plate", "glued the plate back together"),
            ("tore a page of a book", "fixed the page with tape"),
            ("stepped on the flowers in the garden", "planted new seeds"),
            ("lost the key to the shed", "looked for the key until they found it"),
        ])
        grown_name = capitalised(grown)
        return [
            f"{self.pick(DAYS)}, {a.kind} named {a.name} was at home with {grown}.",
            f"{a.He} was in a hurry to play, so {a.he} ran {self.pick(['through the house', 'past the table', 'too fast'])}.",
            f"Because {a.he} was running, {a.he} {accident}.",
            f"{a.name} felt {self.pick(['bad', 'sad', 'worried', 'scared'])}. {a.He} wanted to hide.",
            f"But then {a.he} thought, \"It is better to tell the truth.\"",
            f"{a.name} went to {grown} and said, \"I am sorry. I {accident}.\"",
            f"{grown_name} gave {a.him} a hug. \"Thank you for telling me the truth,\" {grown} said.",
            f"Together they {fix}.",
            f"{a.name} felt much better. {a.He} learned to walk, not run, in the house, and to always tell the truth.",
        ]

    def weather(self) -> list[str]:
        a, b = self.cast()
        place, _, activities = self.place(outdoor=True)
        food = self.pick(FOODS)
        storm, feel = self.pick(WEATHER_BAD)
        game = self.pick(INDOOR_GAMES)
        return [
            self.opening(a),
            f"{a.name} and {b.name} wanted to have a picnic {at(place)}. They packed {food} and a blanket.",
            f"But when they opened the door, {storm}. Everything outside was {feel}.",
            self.say(a, self.pick(["Oh no! Now we can not go.", "Our picnic is ruined!", "This is not fair."])),
            f"{a.name} was {self.pick(FEELINGS_BAD)}. Then {b.name} had an idea.",
            self.say(b, "Let's have the picnic inside!"),
            f"So they put the blanket on the floor and ate the {food} in the living room. Then they {game}.",
            f"When the sky was clear again, they went to {place} and {self.pick(activities)}.",
            f"{a.name} learned that a bad day can still be a good day, if you have a friend.",
        ]

    def helping_animal(self) -> list[str]:
        a, _ = self.cast()
        species = self.pick(["bird", "puppy", "kitten", "duck", "rabbit", "hedgehog", "owl"])
        name = self.pick(ANIMAL_NAMES)
        place, spots, _ = self.place()
        hurt = self.pick(["a hurt wing", "a sore leg", "a thorn in its paw", "no mother", "a cold"])
        grown = self.pick(GROWN_UPS)
        return [
            self.opening(a),
            f"{capitalised(at(place))}, near {self.pick(spots)}, {a.he} found {article(species)} {species} with {hurt}.",
            f"The {species} was shaking because it was cold and scared.",
            self.say(a, f"Poor little {species}. I will help you."),
            f"{a.name} carried it home {self.pick(['very carefully', 'gently', 'slowly'])}. {capitalised(grown)} helped {a.him} make a soft bed in a box.",
            f"{a.name} named the {species} {name}. Every day {a.he} gave {name} food and water.",
            f"Because {a.name} took such good care of it, {name} got better and stronger.",
            f"One day, {name} was well again. It was time for {name} to go home.",
            self.say(a, f"Goodbye, {name}! I will miss you."),
            f"{a.name} felt a little sad, but also {self.pick(FEELINGS_GOOD)}.",
            self.pick([f"The next morning, {name} came back to visit, and {a.name} laughed with joy.",
                       f"Sometimes {a.name} still sees {name} {at(place)}, and {a.he} always waves.",
                       f"{a.He} knew that {a.he} had done a good thing."]),
        ]

    def race(self) -> list[str]:
        a, b = self.cast()
        place, spots, _ = self.place(outdoor=True)
        goal = self.pick(spots)
        return [
            f"{self.pick(DAYS)}, {a.name} and {b.name} were {at(place)}.",
            self.say(a, f"Let's have a race to {goal}!"),
            self.say(b, self.pick(["Okay! I am very fast.", "Ready, set, go!", "I will win!"])),
            f"They ran as fast as they could. {b.name} was in front, but then {b.he} {self.pick(['tripped on a stone', 'slipped in the mud', 'hurt ' + b.his + ' foot'])} and fell down.",
            f"{a.name} could win the race now. But {a.he} stopped, because {a.his} friend was hurt.",
            self.say(a, f"Are you okay, {b.name}? Let me help you up."),
            f"{a.name} helped {b.name} stand up, and they walked to {goal} together, side by side.",
            self.say(b, "You could have won. Why did you stop?"),
            self.say(a, self.pick(["Because friends are more important than winning.",
                                   "Winning is no fun alone.", "Because you would help me too."])),
            self.ending(a, b),
        ]

    SHAPES = ("lost_and_found", "problem_and_help", "sharing", "discovery", "mistake",
              "weather", "helping_animal", "race")

    def scenery(self) -> str:
        return (f"The {self.pick(SKIES)} was {self.pick(SKY_COLORS)}, and {self.pick(NATURE)} "
                f"{self.pick(NATURE_VERBS)}.")

    def story(self) -> str:
        sentences = getattr(self, self.pick(self.SHAPES))()
        if self.rng.random() < 0.5:  # a line of setting after the opening, for variety
            sentences.insert(1, self.scenery())
        # Stories are one or a few paragraphs: break after some sentences.
        paragraphs, current = [], []
        for sentence in sentences:
            current.append(sentence)
            if len(current) >= 3 and self.rng.random() < 0.35:
                paragraphs.append(" ".join(current))
                current = []
        if current:
            paragraphs.append(" ".join(current))
        return "\n\n".join(paragraphs)


def grown_up_gift(writer: StoryWriter, a: Character) -> str:
    return f"{capitalised(writer.pick(GROWN_UPS))} had given it to {a.him} for {a.his} birthday."


def capitalised(text: str) -> str:
    """First letter upper case, the rest untouched ("the teacher" -> "The teacher", "Aunt Rose" kept)."""
    return text[:1].upper() + text[1:]


def article(word: str) -> str:
    word = word.lower()
    sounds_like_you = word.startswith(("uni", "use", "eu"))
    return "an" if word[:1] in "aeiou" and not sounds_like_you else "a"


def at(place: str) -> str:
    return f"{PREPOSITIONS.get(place, 'at')} {place}"


def generate_stories(size_mb: float, seed: int) -> list[str]:
    """Stories totalling at least size_mb megabytes (10**6 bytes) of UTF-8 text."""
    if not 0 < size_mb <= MAX_SIZE_MB:
        raise UserError(f"--size-mb is {size_mb}; use a size between 0 and {MAX_SIZE_MB:g} (MB)")
    writer = StoryWriter(random.Random(seed))
    target = int(size_mb * 1_000_000)
    stories: list[str] = []
    total = 0
    while total < target:
        story = writer.story()
        stories.append(story)
        total += len(story) + 1  # stories are ASCII: one byte per character
    return stories


def load_sample(spec: str, options: SourceOptions) -> Corpus:
    size_mb = DEFAULT_SIZE_MB if options.size_mb is None else options.size_mb
    stories = generate_stories(size_mb, options.seed)
    return Corpus(documents=[Document.of_text(s) for s in stories], kind="text",
                  source=f"sample(size_mb={size_mb:g}, seed={options.seed})",
                  details={"generator": "lumi_jax.data.sample_corpus", "size_mb": size_mb})
