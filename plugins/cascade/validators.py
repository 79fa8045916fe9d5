"""Quality checks of a draft answer: each gives a score from 0 (bad) to 1 (good).

A validator is a small class, built once from its options:

```python
class Polite:
    name = "polite"

    def __init__(self, options: dict) -> None:
        self.words = options.get("words", ["please"])

    def check(self, question: Question, draft: Draft) -> float | None:
        return 1.0 if any(w in draft.text.lower() for w in self.words) else 0.2
```

``check`` returns a score, or None for "no opinion" (a JSON check on a request that
asked for no JSON). A validator may also define ``route(question) -> float | None``,
run before the draft is asked: a low score there sends the request straight to the
strong model (the complexity estimate does this). The cascade accepts a draft when
every score is at least the threshold; the lowest score names the reason.

Third-party validators load like plugins: an entry point of the group
``gateway.cascade_validators``, or ``module:attr``.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Protocol

import jsonschema

from .answer import Draft, Question

ENTRY_POINT_GROUP = "gateway.cascade_validators"


class Validator(Protocol):
    name: str

    def check(self, question: Question, draft: Draft) -> float | None: ...


class MinLength:
    """An empty answer scores 0; a short one, relative to the question, scores low.

    Expected words grow with the question (``ratio`` of its words) between
    ``min_words`` and ``max_words``; the score is the share of them present.
    """

    name = "length"

    def __init__(self, options: dict[str, Any]) -> None:
        self.min_words = int(options.get("min_words", 3))
        self.max_words = int(options.get("max_words", 40))
        self.ratio = float(options.get("ratio", 0.15))

    def check(self, question: Question, draft: Draft) -> float | None:
        if draft.tool_calls:
            return None
        words = len(draft.text.split())
        if words == 0:
            return 0.0
        expected = min(self.max_words, max(self.min_words, len(question.text.split()) * self.ratio))
        return min(1.0, words / expected)


# Refusals and hedges in English, French, Spanish and German: a draft that says it
# will not or cannot answer is worth asking the strong model about.
REFUSALS = (
    r"\bI(?:'m| am)? (?:sorry,? (?:but )?)?(?:I )?(?:can(?:'|no)t|cannot|won'?t|am (?:not able|unable)|'m (?:not able|unable)) "
    r"(?:help|assist|answer|provide|do|comply|complete|fulfil)",
    r"\bI(?:'m| am) (?:not able|unable) to\b",
    r"\bas an AI(?: language model)?\b",
    r"\bI (?:must|have to) (?:decline|refuse)\b",
    r"\bje ne (?:peux|suis) pas (?:en mesure|aider|répondre)",
    r"\bno (?:puedo|estoy en condiciones de) (?:ayudar|responder|hacer)",
    r"\bich kann (?:(?:dir |Ihnen )?(?:dabei )?)?nicht (?:helfen|antworten|beantworten)",
)
HEDGES = (
    r"\bI(?:'m| am) not (?:sure|certain)\b",
    r"\bI don'?t (?:really )?know\b",
    r"\b(?:it'?s )?hard to say\b",
    r"\bI (?:can'?t|cannot) be (?:sure|certain)\b",
)


class Refusal:
    """A refusal scores 0, a hedge ``hedge_score`` (0.4); matched in the first ``window`` characters."""

    name = "refusal"

    def __init__(self, options: dict[str, Any]) -> None:
        extra = options.get("phrases", [])
        self.refusal = re.compile("|".join([*REFUSALS, *map(re.escape, extra)]), re.I)
        self.hedge = re.compile("|".join(HEDGES), re.I)
        self.hedge_score = float(options.get("hedge_score", 0.4))
        self.window = int(options.get("window", 400))

    def check(self, question: Question, draft: Draft) -> float | None:
        if draft.finish == "content_filter":
            return 0.0
        head = draft.text[: self.window]
        if self.refusal.search(head):
            return 0.0
        return self.hedge_score if self.hedge.search(head) else 1.0


class Truncation:
    """An answer cut by the token limit (``finish_reason: length``) scores 0."""

    name = "truncation"

    def __init__(self, options: dict[str, Any]) -> None:
        pass

    def check(self, question: Question, draft: Draft) -> float | None:
        return 0.0 if draft.finish == "length" else 1.0


class JsonAnswer:
    """With a JSON response format: invalid JSON, or JSON failing the request's schema, scores 0."""

    name = "json"

    def __init__(self, options: dict[str, Any]) -> None:
        pass

    def check(self, question: Question, draft: Draft) -> float | None:
        if question.json_mode is None or draft.tool_calls:
            return None
        try:
            document = json.loads(draft.text)
        except ValueError:
            return 0.0
        if question.json_schema is not None and not _valid(document, question.json_schema):
            return 0.0
        return 1.0


class ToolArguments:
    """Tool calls whose arguments are not JSON, or miss what the tool's schema requires, score 0."""

    name = "tool_arguments"

    def __init__(self, options: dict[str, Any]) -> None:
        pass

    def check(self, question: Question, draft: Draft) -> float | None:
        if not draft.tool_calls:
            return None
        for name, arguments in draft.tool_calls:
            if question.tools and name not in question.tools:
                return 0.0
            try:
                document = json.loads(arguments or "{}")
            except ValueError:
                return 0.0
            schema = question.tools.get(name)
            if schema and not _valid(document, schema):
                return 0.0
        return 1.0


class Confidence:
    """The answer's mean token probability (from logprobs), when the provider returned them.

    The score is that probability divided by ``min_probability`` (capped at 1), so
    a draft less sure than ``min_probability`` on average falls under a threshold of 1.
    """

    name = "confidence"
    wants_logprobs = True

    def __init__(self, options: dict[str, Any]) -> None:
        self.min_probability = float(options.get("min_probability", 0.6))

    def check(self, question: Question, draft: Draft) -> float | None:
        if not draft.logprobs:
            return None
        mean = sum(draft.logprobs) / len(draft.logprobs)
        return min(1.0, math.exp(mean) / self.min_probability)


_HARD = re.compile(
    r"\b(?:prove|proof|derive|derivation|step[- ]by[- ]step|analy[sz]e|trade-?offs?|optimi[sz]e|refactor|"
    r"architecture|theorem|complexity|debug|multi-?step|compare and contrast|in depth|rigorous)\b",
    re.I,
)
_CODE = re.compile(r"```|\bdef |\bclass |\bfunction\b|#include|SELECT .* FROM", re.I)
_MATH = re.compile(r"[∫∑√π]|\\frac|\b(?:integral|eigen\w*|matrix|differential|probability)\b", re.I)


class Complexity:
    """Before the draft: a question that looks hard goes straight to the strong model.

    A heuristic, not a model: length (up to 0.4 at ``long_words``), code (0.3),
    mathematics (0.3) and each word such as "prove", "step by step" or "trade-offs"
    (0.2, up to 0.6) add to an estimate in [0, 1]; the route score is ``1 - estimate``.
    With the default threshold of 0.5 a question needs more than half of that (three
    such words, or code with mathematics, or a long question with code) to skip the draft.
    """

    name = "complexity"

    def __init__(self, options: dict[str, Any]) -> None:
        self.long_words = int(options.get("long_words", 300))

    def route(self, question: Question) -> float | None:
        text = question.text
        estimate = 0.0
        words = len(text.split())
        estimate += min(0.4, 0.4 * words / self.long_words)
        if _CODE.search(text):
            estimate += 0.3
        if _MATH.search(text):
            estimate += 0.3
        estimate += min(0.6, 0.2 * len(_HARD.findall(text)))
        return 1.0 - min(1.0, estimate)

    def check(self, question: Question, draft: Draft) -> float | None:
        return None


def _valid(document: Any, schema: dict[str, Any]) -> bool:
    try:
        jsonschema.validate(document, schema)
    except jsonschema.ValidationError:
        return False
    except jsonschema.SchemaError:
        return True  # the caller's schema is broken: not the draft's fault
    return True


BUILT_IN: dict[str, Callable[[dict[str, Any]], Any]] = {
    cls.name: cls for cls in (MinLength, Refusal, Truncation, JsonAnswer, ToolArguments, Confidence, Complexity)
}
DEFAULT = ("complexity", "length", "refusal", "truncation", "json", "tool_arguments", "confidence")


def load(use: str) -> Callable[[dict[str, Any]], Any]:
    """A validator class by built-in name, entry point of ``gateway.cascade_validators``, or ``module:attr``."""
    if use in BUILT_IN:
        return BUILT_IN[use]
    if ":" in use:
        module_name, _, attr = use.partition(":")
        return getattr(importlib.import_module(module_name), attr)  # type: ignore[no-any-return]
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=use):
        return ep.load()  # type: ignore[no-any-return]
    raise LookupError(f"unknown validator {use!r} (built-in: {', '.join(BUILT_IN)}; or an entry point, or module:attr)")
