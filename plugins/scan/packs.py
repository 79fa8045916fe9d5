"""YAML rule packs: loading, checking, and the :class:`Rule` each entry becomes.

A pack is one YAML file (the built-in ones are ``rules/<family>.yaml``)::

    family: secret                 # default family of the pack's rules
    normalised: false              # default: also match leetspeak/ROT13 views? (true)
    vars:                          # {{name}} in a pattern is replaced by the value
      key: '[A-Za-z0-9_-]'
    rules:
      - id: secret.openai_key      # unique over every loaded pack
        severity: CRITICAL         # LOW | MEDIUM | HIGH | CRITICAL
        description: OpenAI API key
        patterns: ['\\bsk-(?:proj-)?{{key}}{20,}']   # RE2 syntax, case-insensitive unless case_sensitive
        case_sensitive: true
        validate: not_placeholder  # a check on the matched text (see validators.py)
        examples:                  # run by the tests: must match / must not match
          match: ['key sk-proj-Ab3dEf...']
          clean: ['sk-your-key-here']

A rule has ``patterns`` or names a built-in ``detector`` (the obfuscation signals).
When a pattern has a capturing group, the first group is the finding (its offsets
are reported and redacted); otherwise the whole match is.

Every problem is a :class:`PackError` naming the file, the rule and what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import re2
import yaml

from gateway_plugins.scan import validators

RULES_DIR = Path(__file__).parent / "rules"
SEVERITY_NAMES = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
#: the obfuscation signals computed in code; a rule names one with ``detector:``
DETECTORS = ("zero_width", "bidi", "homoglyph", "evasion", "leetspeak", "rot13", "encoded_payload")

_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_FAMILY = re.compile(r"^[a-z][a-z0-9_]*$")
_VAR = re.compile(r"\{\{(\w+)\}\}")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class PackError(Exception):
    """A rule pack that cannot be used: names the file, the rule and the problem."""

    def __init__(self, path: str | Path, rule: str | None, problem: str) -> None:
        self.path = str(path)
        self.rule = rule
        self.problem = problem
        where = f"{self.path}: rule {rule}" if rule else self.path
        super().__init__(f"{where}: {problem}")


class Examples(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    match: list[str] = []
    clean: list[str] = []


class RuleEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: str
    severity: str
    description: str
    family: str | None = None
    patterns: list[str] = []
    pattern: str | None = None
    detector: str | None = None
    validate: str | None = None
    case_sensitive: bool = False
    normalised: bool | None = None
    examples: Examples = Examples()


class PackFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    rules: list[dict[str, Any]]
    family: str | None = None
    description: str = ""
    normalised: bool = True
    vars: dict[str, str] = {}


class Rule(msgspec.Struct, frozen=True, kw_only=True):
    """One checked rule: its patterns are ready for RE2 (flags and vars applied)."""

    id: str
    family: str
    severity: str
    description: str
    patterns: tuple[str, ...] = ()
    detector: str | None = None
    validate: str | None = None
    normalised: bool = True
    examples: Examples = Examples()
    source: str = ""


def load_pack(path: str | Path) -> list[Rule]:
    """The rules of one pack file; raises :class:`PackError`."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)
    except OSError as exc:
        raise PackError(path, None, f"cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise PackError(path, None, f"not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise PackError(path, None, "a pack is a mapping with a 'rules' list")
    try:
        pack = msgspec.convert(raw, PackFile)
    except msgspec.ValidationError as exc:
        raise PackError(path, None, str(exc)) from None
    rules = []
    for index, entry in enumerate(pack.rules):
        name = str(entry.get("id", f"#{index + 1}")) if isinstance(entry, dict) else f"#{index + 1}"
        try:
            item = msgspec.convert(entry, RuleEntry)
        except msgspec.ValidationError as exc:
            raise PackError(path, name, str(exc)) from None
        rules.append(_check(path, pack, item))
    return rules


def _check(path: Path, pack: PackFile, entry: RuleEntry) -> Rule:
    def fail(problem: str) -> PackError:
        return PackError(path, entry.id, problem)

    if not _ID.match(entry.id):
        raise fail("id must be lower-case letters, digits, '.', '_' or '-'")
    family = entry.family or pack.family
    if family is None:
        raise fail("no family (set 'family' on the rule or the pack)")
    if not _FAMILY.match(family):
        raise fail(f"family {family!r} must be a lower-case identifier")
    if entry.severity not in SEVERITY_NAMES:
        raise fail(f"severity {entry.severity!r} is not one of {', '.join(SEVERITY_NAMES)}")
    if not entry.description.strip():
        raise fail("description is empty")
    sources = list(entry.patterns) + ([entry.pattern] if entry.pattern else [])
    if entry.detector is not None:
        if entry.detector not in DETECTORS:
            raise fail(f"detector {entry.detector!r} is not one of {', '.join(DETECTORS)}")
        if sources:
            raise fail("a rule has patterns or a detector, not both")
    elif not sources:
        raise fail("no patterns")
    if entry.validate is not None and validators.get(entry.validate) is None:
        raise fail(f"validate {entry.validate!r} is not one of {', '.join(validators.NAMES)}")
    patterns = []
    for source in sources:
        try:
            text = _VAR.sub(lambda m: _var(pack, m.group(1)), source)
        except KeyError as exc:
            raise fail(f"pattern uses {{{{{exc.args[0]}}}}}, which 'vars' does not define") from None
        pattern = text if entry.case_sensitive else f"(?i){text}"
        try:
            compiled = re2.compile(pattern)
        except re2.error as exc:
            raise fail(f"pattern {source!r} is not valid RE2 syntax ({exc}); RE2 has no look-around or backreferences") from None
        if compiled.match("") is not None or compiled.search("") is not None:
            raise fail(f"pattern {source!r} matches the empty string")
        patterns.append(pattern)
    normalised = entry.normalised if entry.normalised is not None else pack.normalised
    return Rule(
        id=entry.id,
        family=family,
        severity=entry.severity,
        description=entry.description.strip(),
        patterns=tuple(patterns),
        detector=entry.detector,
        validate=entry.validate,
        normalised=normalised,
        examples=entry.examples,
        source=str(path),
    )


def _var(pack: PackFile, name: str) -> str:
    return pack.vars[name]


def builtin_packs() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yaml"))


def load_rules(extra: Iterable[str | Path] = (), disable: Iterable[str] = ()) -> list[Rule]:
    """Built-in packs, then the extra ones; ids must be unique; ``disable`` drops rules.

    An id in ``disable`` that no pack defines is a :class:`PackError` too (a typo
    would otherwise leave a rule on silently)."""
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    for path in [*builtin_packs(), *map(Path, extra)]:
        for rule in load_pack(path):
            if rule.id in seen:
                raise PackError(path, rule.id, f"id already defined in {seen[rule.id]}")
            seen[rule.id] = str(path)
            rules.append(rule)
    unknown = sorted(set(disable) - set(seen))
    if unknown:
        raise PackError("disable", unknown[0], "no loaded pack defines this rule")
    off = set(disable)
    return [rule for rule in rules if rule.id not in off]
