"""The generated corpus the default chat model is trained on.

A small, closed world of simple facts (animals, colours, numbers, capitals, greetings, little
stories) turned into chat dialogues with several phrasings per question, so that a model of a few
million parameters learns to answer in readable English. Everything is derived from a seeded
``random.Random``: the same seed gives the same corpus, byte for byte.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

NUMBERS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]

ANIMALS: dict[str, tuple[str, int, str, str]] = {
    # name: (sound, legs, home, food)
    "cat": ("meow", 4, "in a house", "fish"),
    "dog": ("woof", 4, "in a house", "meat"),
    "cow": ("moo", 4, "on a farm", "grass"),
    "duck": ("quack", 2, "near a pond", "seeds"),
    "sheep": ("baa", 4, "on a farm", "grass"),
    "horse": ("neigh", 4, "on a farm", "hay"),
    "pig": ("oink", 4, "on a farm", "corn"),
    "owl": ("hoot", 2, "in a tree", "mice"),
    "lion": ("roar", 4, "in the grassland", "meat"),
    "frog": ("croak", 4, "near a pond", "flies"),
    "bee": ("buzz", 6, "in a hive", "nectar"),
    "hen": ("cluck", 2, "on a farm", "seeds"),
    "mouse": ("squeak", 4, "in a field", "cheese"),
    "bird": ("tweet", 2, "in a nest", "seeds"),
    "spider": ("nothing", 8, "in a web", "flies"),
}

COLOURS = {
    "the sky": "blue",
    "grass": "green",
    "snow": "white",
    "the sun": "yellow",
    "a banana": "yellow",
    "an apple": "red",
    "coal": "black",
    "an orange": "orange",
    "a lemon": "yellow",
    "milk": "white",
    "the sea": "blue",
    "a leaf": "green",
    "a strawberry": "red",
    "chocolate": "brown",
    "a carrot": "orange",
    "a plum": "purple",
}

CAPITALS = {
    "France": "Paris",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Germany": "Berlin",
    "Japan": "Tokyo",
    "China": "Beijing",
    "Egypt": "Cairo",
    "Canada": "Ottawa",
    "Russia": "Moscow",
    "England": "London",
    "Greece": "Athens",
    "Peru": "Lima",
    "Kenya": "Nairobi",
    "Norway": "Oslo",
    "Poland": "Warsaw",
    "Ireland": "Dublin",
    "Portugal": "Lisbon",
    "Austria": "Vienna",
    "Sweden": "Stockholm",
    "Mexico": "Mexico City",
    "India": "New Delhi",
    "Brazil": "Brasilia",
    "Australia": "Canberra",
    "Chile": "Santiago",
}

OPPOSITES = {
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "up": "down",
    "happy": "sad",
    "day": "night",
    "light": "dark",
    "old": "new",
    "open": "closed",
    "wet": "dry",
    "loud": "quiet",
    "full": "empty",
    "hard": "soft",
    "early": "late",
    "near": "far",
}

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

NAMES = ["Tom", "Anna", "Sam", "Lily", "Ben", "Mia", "Max", "Lucy", "Leo", "Emma"]
PLACES = ["the park", "the garden", "the forest", "the beach", "the market", "the river"]
OBJECTS = ["a red ball", "a blue kite", "a little boat", "a shiny stone", "a small box", "a yellow hat"]
FEELINGS = ["happy", "glad", "proud", "excited", "calm"]

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a friendly assistant. Answer in short sentences.",
    "You are Gate, a small and helpful model.",
]


@dataclass(frozen=True)
class Dialogue:
    """One chat: an optional system prompt and alternating user / assistant turns."""

    system: str | None
    turns: tuple[tuple[str, str], ...]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _greeting(rng: random.Random) -> tuple[str, str]:
    user = rng.choice(["Hello!", "Hi!", "Hi there.", "Good morning!", "Hello, how are you?", "Hey!"])
    answer = rng.choice(
        [
            "Hello! How can I help you today?",
            "Hi! I am happy to help. What would you like to know?",
            "Hello! I am fine, thank you. How can I help you?",
        ]
    )
    return user, answer


def _identity(rng: random.Random) -> tuple[str, str]:
    user = rng.choice(["What is your name?", "Who are you?", "Tell me about yourself."])
    return user, "My name is Gate. I am a small language model served by lmgate. I like to answer simple questions."


def _thanks(rng: random.Random) -> tuple[str, str]:
    user = rng.choice(["Thank you!", "Thanks.", "Thank you very much.", "Goodbye!", "Bye!"])
    answer = "You are welcome! Have a nice day." if user.startswith("Th") else "Goodbye! Have a nice day."
    return user, answer


def _animal_sound(rng: random.Random) -> tuple[str, str]:
    animal = rng.choice(list(ANIMALS))
    sound = ANIMALS[animal][0]
    user = rng.choice(
        [f"What does a {animal} say?", f"What sound does a {animal} make?", f"How does a {animal} sound?"]
    )
    if sound == "nothing":
        return user, f"A {animal} does not make a sound. It is very quiet."
    return user, f"A {animal} says {sound}."


def _animal_legs(rng: random.Random) -> tuple[str, str]:
    animal = rng.choice(list(ANIMALS))
    legs = NUMBERS[ANIMALS[animal][1]]
    user = rng.choice([f"How many legs does a {animal} have?", f"How many legs has a {animal} got?"])
    return user, f"A {animal} has {legs} legs."


def _animal_home(rng: random.Random) -> tuple[str, str]:
    animal = rng.choice(list(ANIMALS))
    home = ANIMALS[animal][2]
    user = rng.choice([f"Where does a {animal} live?", f"Where do you find a {animal}?"])
    return user, f"A {animal} lives {home}."


def _animal_food(rng: random.Random) -> tuple[str, str]:
    animal = rng.choice(list(ANIMALS))
    food = ANIMALS[animal][3]
    user = rng.choice([f"What does a {animal} eat?", f"What do {animal}s like to eat?"])
    return user, f"A {animal} likes to eat {food}."


def _colour(rng: random.Random) -> tuple[str, str]:
    thing = rng.choice(list(COLOURS))
    user = rng.choice([f"What color is {thing}?", f"What colour is {thing}?", f"Tell me the color of {thing}."])
    return user, f"{_cap(thing)} is {COLOURS[thing]}."


def _capital(rng: random.Random) -> tuple[str, str]:
    country = rng.choice(list(CAPITALS))
    user = rng.choice(
        [
            f"What is the capital of {country}?",
            f"Which city is the capital of {country}?",
            f"Name the capital of {country}.",
        ]
    )
    return user, f"The capital of {country} is {CAPITALS[country]}."


def _arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 10), rng.randint(0, 10)
    if rng.random() < 0.6:
        user = rng.choice(
            [
                f"What is {NUMBERS[a]} plus {NUMBERS[b]}?",
                f"What is {a} plus {b}?",
                f"Add {NUMBERS[a]} and {NUMBERS[b]}.",
            ]
        )
        return user, f"{_cap(NUMBERS[a])} plus {NUMBERS[b]} is {NUMBERS[a + b]}."
    a, b = max(a, b), min(a, b)
    user = rng.choice([f"What is {NUMBERS[a]} minus {NUMBERS[b]}?", f"What is {a} minus {b}?"])
    return user, f"{_cap(NUMBERS[a])} minus {NUMBERS[b]} is {NUMBERS[a - b]}."


def _counting(rng: random.Random) -> tuple[str, str]:
    start = rng.randint(1, 5)
    end = rng.randint(start + 2, min(start + 8, 20))
    user = rng.choice([f"Count from {NUMBERS[start]} to {NUMBERS[end]}.", f"Count from {start} to {end}."])
    words = [NUMBERS[i] for i in range(start, end + 1)]
    return user, _cap(", ".join(words)) + "."


def _opposite(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(list(OPPOSITES))
    user = rng.choice([f"What is the opposite of {word}?", f"Tell me the opposite of {word}."])
    return user, f"The opposite of {word} is {OPPOSITES[word]}."


def _day_after(rng: random.Random) -> tuple[str, str]:
    i = rng.randrange(len(DAYS))
    user = rng.choice([f"What day comes after {DAYS[i]}?", f"Which day is after {DAYS[i]}?"])
    return user, f"The day after {DAYS[i]} is {DAYS[(i + 1) % 7]}."


def _story(rng: random.Random) -> tuple[str, str]:
    name, place, thing, feeling = rng.choice(NAMES), rng.choice(PLACES), rng.choice(OBJECTS), rng.choice(FEELINGS)
    animal = rng.choice(list(ANIMALS))
    user = rng.choice(
        ["Tell me a story.", "Tell me a short story.", "Can you tell me a story?", f"Tell me a story about {name}."]
    )
    sentences = [
        f"Once upon a time, there was a child named {name}.",
        f"One day, {name} went to {place} and found {thing}.",
        f"A little {animal} came to look at it.",
        f"{name} and the {animal} played together all day.",
        f"When the sun went down, {name} went home and felt very {feeling}.",
        "The end.",
    ]
    return user, " ".join(sentences)


def _spelling(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(list(ANIMALS) + list(OPPOSITES))
    user = rng.choice([f"How do you spell {word}?", f"Spell the word {word}."])
    return user, f"{_cap(word)} is spelled " + "-".join(word.upper()) + "."


TOPICS: list[Callable[[random.Random], tuple[str, str]]] = [
    _greeting,
    _identity,
    _thanks,
    _animal_sound,
    _animal_legs,
    _animal_home,
    _animal_food,
    _colour,
    _capital,
    _arithmetic,
    _counting,
    _opposite,
    _day_after,
    _story,
    _spelling,
]


def dialogues(seed: int) -> Iterator[Dialogue]:
    """Yield an endless, reproducible stream of dialogues of one to three turns."""
    rng = random.Random(seed)
    while True:
        system = rng.choice(SYSTEM_PROMPTS) if rng.random() < 0.5 else None
        turns = tuple(rng.choice(TOPICS)(rng) for _ in range(rng.choice((1, 1, 2, 3))))
        yield Dialogue(system=system, turns=turns)


def plain_text(seed: int, count: int) -> list[str]:
    """All user and assistant sentences of ``count`` dialogues: the tokenizer's training text."""
    stream = dialogues(seed)
    lines: list[str] = []
    for _ in range(count):
        dialogue = next(stream)
        if dialogue.system:
            lines.append(dialogue.system)
        for user, answer in dialogue.turns:
            lines.extend((user, answer))
    return lines
