"""The function-calling part of the default chat model's corpus.

Five functions — ``get_weather``, ``add``, ``multiply``, ``convert_units`` and ``get_capital`` — each
with a few descriptions and JSON Schemas. A dialogue lists one to four of them (random subset, random
order, sometimes after a system prompt); the user asks something one of them answers; the assistant
calls it with the arguments copied from the question (sometimes two calls in one turn, for two cities
or two countries); the results come back as tool messages; the assistant answers from the results.
Some dialogues list tools but ask something none of them answers (a plain answer, no call). Every
dialogue is ``lmgate.backends.types`` messages and tools, so it is rendered by the server's own chat
template code. Seeded like corpus.py: the same seed gives the same dialogues.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from lmgate.backends.types import ChatMessage, Role, Tool, ToolCall
from lmgate.quantize.tinychat.chats import Chat
from lmgate.quantize.tinychat.corpus import CAPITALS, SYSTEM_PROMPTS, TOPICS

CITIES = [*CAPITALS.values(), "New York", "Sydney", "Barcelona", "Munich", "Venice", "Toronto", "Chicago",
          "Boston", "Dubai", "Istanbul", "Seoul", "Bangkok", "Amsterdam", "Prague", "Zurich", "Geneva"]  # fmt: skip
CONDITIONS = ["sunny", "cloudy", "rainy", "windy", "snowy", "foggy", "clear"]
#: (from_unit, to_unit, factor): conversions whose results are whole numbers.
UNITS = [
    ("kilometers", "meters", 1000),
    ("meters", "centimeters", 100),
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("days", "hours", 24),
    ("weeks", "days", 7),
    ("kilograms", "grams", 1000),
    ("liters", "milliliters", 1000),
    ("feet", "inches", 12),
]


def _schema(properties: dict[str, dict[str, object]], required: list[str]) -> str:
    return json.dumps({"type": "object", "properties": properties, "required": required})


def _string(description: str | None, **extra: object) -> dict[str, object]:
    return {"type": "string", **({"description": description} if description else {}), **extra}


def _number(kind: str, description: str | None) -> dict[str, object]:
    return {"type": kind, **({"description": description} if description else {})}


def _weather_tool(rng: random.Random) -> Tool:
    description = rng.choice(["Get the current weather in a city.", "Get the weather for a city.",
                              "Look up today's weather in a given city."])  # fmt: skip
    city = _string(rng.choice([None, None, "The city name.", "The name of the city, e.g. Paris."]))
    properties = {"city": city}
    if rng.random() < 0.3:
        properties["unit"] = _string(None, enum=["celsius", "fahrenheit"])
    return Tool("get_weather", description, _schema(properties, ["city"]))


def _pair_tool(name: str, verb: str) -> Callable[[random.Random], Tool]:
    def make(rng: random.Random) -> Tool:
        description = rng.choice([f"{verb} two numbers.", f"{verb} two numbers and return the result.",
                                  f"{verb} a and b."])  # fmt: skip
        kind = rng.choice(["number", "integer"])
        labels = rng.choice([(None, None), (None, None), ("The first number.", "The second number.")])
        properties = {"a": _number(kind, labels[0]), "b": _number(kind, labels[1])}
        return Tool(name, description, _schema(properties, ["a", "b"]))

    return make


def _convert_tool(rng: random.Random) -> Tool:
    description = rng.choice(["Convert a value from one unit to another.", "Convert between units.",
                              "Convert a quantity to another unit of measure."])  # fmt: skip
    properties = {
        "value": _number("number", rng.choice([None, None, "The value to convert."])),
        "from_unit": _string(rng.choice([None, None, "The unit of the value."])),
        "to_unit": _string(rng.choice([None, None, "The unit to convert to."])),
    }
    return Tool("convert_units", description, _schema(properties, ["value", "from_unit", "to_unit"]))


def _capital_tool(rng: random.Random) -> Tool:
    description = rng.choice(["Get the capital city of a country.", "Look up the capital of a country.",
                              "Return the capital of the given country."])  # fmt: skip
    properties = {"country": _string(rng.choice([None, None, "The country name.", "The name of a country."]))}
    return Tool("get_capital", description, _schema(properties, ["country"]))


TOOLS: dict[str, Callable[[random.Random], Tool]] = {
    "get_weather": _weather_tool,
    "add": _pair_tool("add", "Add"),
    "multiply": _pair_tool("multiply", "Multiply"),
    "convert_units": _convert_tool,
    "get_capital": _capital_tool,
}


@dataclass(frozen=True)
class _Call:
    name: str
    arguments: dict[str, object]
    result: dict[str, object]


#: A tool question: the user's text, the calls it needs, and the final answer (given the calls).
_Exchange = tuple[str, list[_Call], str]


def _weather(rng: random.Random, unit_allowed: bool) -> _Exchange:
    cities = rng.sample(CITIES, 2 if rng.random() < 0.2 else 1)
    unit = "fahrenheit" if unit_allowed and rng.random() < 0.3 else None
    calls, answers = [], []
    for city in cities:
        degrees = rng.randint(40, 95) if unit else rng.randint(-5, 35)
        condition = rng.choice(CONDITIONS)
        arguments: dict[str, object] = {"city": city} | ({"unit": unit} if unit else {})
        result = {"city": city, "temperature": degrees, "unit": unit or "celsius", "condition": condition}
        calls.append(_Call("get_weather", arguments, result))
        answers.append(f"It is {condition} and {degrees} degrees in {city}.")
    place = " and in ".join(cities) if rng.random() < 0.5 else " and ".join(cities)
    suffix = " in Fahrenheit" if unit else ""
    user = rng.choice([f"What is the weather in {place}{suffix}?", f"What's the weather like in {place}{suffix}?",
                       f"How is the weather in {place} today{suffix}?", f"Tell me the weather in {place}{suffix}.",
                       f"What is the temperature in {place}{suffix}?"])  # fmt: skip
    return user, calls, " ".join(answers)


def _add(rng: random.Random, _: bool) -> _Exchange:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    user = rng.choice([f"What is {a} plus {b}?", f"Add {a} and {b}.", f"What is the sum of {a} and {b}?",
                       f"What is {a} + {b}?"])  # fmt: skip
    return user, [_Call("add", {"a": a, "b": b}, {"result": a + b})], f"{a} plus {b} is {a + b}."


def _multiply(rng: random.Random, _: bool) -> _Exchange:
    a, b = rng.randint(0, 30), rng.randint(0, 30)
    user = rng.choice([f"What is {a} times {b}?", f"Multiply {a} by {b}.", f"What is {a} multiplied by {b}?",
                       f"What is {a} * {b}?"])  # fmt: skip
    return user, [_Call("multiply", {"a": a, "b": b}, {"result": a * b})], f"{a} times {b} is {a * b}."


def _convert(rng: random.Random, _: bool) -> _Exchange:
    source, target, factor = rng.choice(UNITS)
    value = rng.randint(1, 50)
    user = rng.choice([f"Convert {value} {source} to {target}.", f"How many {target} are in {value} {source}?",
                       f"What is {value} {source} in {target}?"])  # fmt: skip
    arguments: dict[str, object] = {"value": value, "from_unit": source, "to_unit": target}
    result: dict[str, object] = {"value": value * factor, "unit": target}
    return user, [_Call("convert_units", arguments, result)], f"{value} {source} is {value * factor} {target}."


def _capital(rng: random.Random, _: bool) -> _Exchange:
    countries = rng.sample(list(CAPITALS), 2 if rng.random() < 0.2 else 1)
    calls = [_Call("get_capital", {"country": c}, {"country": c, "capital": CAPITALS[c]}) for c in countries]
    answers = " ".join(f"The capital of {c} is {CAPITALS[c]}." for c in countries)
    both = " and ".join(countries)
    user = rng.choice([f"What is the capital of {both}?", f"Which city is the capital of {both}?",
                       f"Name the capital of {both}."] if len(countries) == 1 else
                      [f"What are the capitals of {both}?", f"Name the capitals of {both}."])  # fmt: skip
    return user, calls, answers


EXCHANGES: dict[str, Callable[[random.Random, bool], _Exchange]] = {
    "get_weather": _weather,
    "add": _add,
    "multiply": _multiply,
    "convert_units": _convert,
    "get_capital": _capital,
}


def _needs(user: str) -> set[str]:
    """The listed functions a plain question would need (so a no-call dialogue never lists them)."""
    words = user.lower()
    capital = {"get_capital"} if "capital" in words else set()
    return capital | ({"add"} if "plus" in words or "add" in words else set())


def _tool_messages(rng: random.Random, user: str, calls: list[_Call], answer: str) -> list[ChatMessage]:
    ids = [f"call_{rng.randrange(16**8):08x}" for _ in calls]
    tool_calls = tuple(ToolCall(i, c.name, json.dumps(c.arguments)) for i, c in zip(ids, calls, strict=True))
    results = [ChatMessage(Role.TOOL, json.dumps(c.result), tool_call_id=i) for i, c in zip(ids, calls, strict=True)]
    return [ChatMessage(Role.USER, user), ChatMessage(Role.ASSISTANT, "", tool_calls=tool_calls), *results,
            ChatMessage(Role.ASSISTANT, answer)]  # fmt: skip


def tool_chats(seed: int) -> Iterator[Chat]:
    """An endless, reproducible stream of chats that list tools: three in four questions call one
    (or two in parallel) and answer from the result, one in four ask something no listed tool answers."""
    rng = random.Random(seed)
    while True:
        messages = [ChatMessage(Role.SYSTEM, rng.choice(SYSTEM_PROMPTS))] if rng.random() < 0.3 else []
        names = rng.sample(list(TOOLS), rng.choice((1, 1, 2, 2, 3, 4)))
        tools = {name: TOOLS[name](rng) for name in names}
        for _ in range(rng.choice((1, 1, 2, 2))):
            if rng.random() < 0.75:
                needed = rng.choice(names)
                user, calls, answer = EXCHANGES[needed](rng, '"unit"' in tools[needed].parameters)
                messages += _tool_messages(rng, user, calls, answer)
            else:
                user, answer = rng.choice(TOPICS)(rng)
                while _needs(user) & tools.keys():
                    user, answer = rng.choice(TOPICS)(rng)
                messages += [ChatMessage(Role.USER, user), ChatMessage(Role.ASSISTANT, answer)]
        yield Chat(tuple(messages), tuple(tools.values()))
