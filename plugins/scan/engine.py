"""The detector: stages that each turn a text into detections, composed in order.

A **stage** is anything with a ``name`` and ``scan(text) -> list[Detection]``
(:class:`Stage`). Offsets are into the text the stage was given. The rules engine
(:class:`RuleStage`) is the first stage; a learned classifier can be a second one:
:class:`Scanner` runs the stages in order, merges their detections (sorted by
offset, duplicates of one rule over one span dropped) and reports the highest
severity. A stage may set ``Detection.score`` (a probability, say) and must never
put the matched text anywhere but in the detection's offsets.

The rules stage matches every pattern of every pack in one pass of a compiled RE2
set (linear time whatever the input: no backtracking blow-up), then runs only the
patterns that hit to find offsets and check validators (Luhn, IBAN mod 97...). It
also looks at normalised views of the text, so obfuscation does not hide a rule's
match: homoglyphs folded and zero-width/bidi characters removed (non-ASCII texts
only), leetspeak undone, ROT13 applied, base64 and hex blobs decoded. A finding
that only a view shows is reported at the offsets of the original text it came
from, and the obfuscation itself is reported as a detection of its own.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import msgspec
import re2

from gateway_plugins.scan import validators
from gateway_plugins.scan.packs import Rule

#: severities from least to most severe; ``SEVERITY_RANK[s]`` orders them
SEVERITIES = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES, start=1)}

#: most matches of one rule reported per text (bounds the work on a hostile body)
MAX_MATCHES_PER_RULE = 20
#: how deep encoded blobs are decoded (base64 of hex of ...)
MAX_DECODE_DEPTH = 2
#: memory budget of each RE2 set's DFA (taken lazily, as states are made)
SET_MAX_MEM = 16 << 20
#: the prefiltered patterns with a bounded gap go in this many sets (see RuleStage)
GATED_SETS = 3
#: up to this many prefilter candidates are searched one by one, more go through the gated sets
FEW_CANDIDATES = 2
#: longer texts go through the gated sets at once: they seldom lack the words of a few gapped patterns
PREFILTER_MAX_BYTES = 2048
#: a bounded gap: up to n words (or characters) between two parts of a pattern
_GAP = re.compile(r"\{0,\d+\}")
#: ordinary prose: a gapped pattern that RE2's prefilter cannot rule out on it has words too
#: common to filter on, and stays in a set (see RuleStage)
_PROBE = b"""The meeting notes say that the team will review the quarterly report again on Monday.
She said the main point of the paper is that caching saves time and money, and he agreed.
Please contain the spill, then wait for the detailed instructions from the maintenance staff.
Our assistant can help you draft a message to the landlord about the broken heater.
Remember to attach the invoice and send it to accounting before the end of the day."""
#: texts longer than this go through the set in overlapping chunks
CHUNK = 128 * 1024
CHUNK_OVERLAP = 2048
#: blobs decoded per text at most
MAX_BLOBS = 16
#: characters either side of a mention of ROT13 (or a cipher, or decoding) read as ROT13
ROT13_WINDOW = 400


class Detection(msgspec.Struct, frozen=True, gc=False):
    """One finding: which rule, which family, how severe, where (``text[start:end]``).

    ``score`` is a stage's confidence when it has one (rules: None); ``stage`` names
    the stage that found it; ``via`` the view that showed it (None: the text as is;
    else ``"homoglyph"``, ``"zero_width"``, ``"leetspeak"``, ``"rot13"``,
    ``"base64"``, ``"hex"``).
    """

    rule_id: str
    family: str
    severity: str
    start: int
    end: int
    score: float | None = None
    stage: str = "rules"
    via: str | None = None


class Stage(Protocol):
    """What the scanner composes: a name and a pure, thread-safe ``scan``."""

    name: str

    def scan(self, text: str) -> list[Detection]: ...


class ScanResult(msgspec.Struct, frozen=True, gc=False):
    """The merged detections of every stage for one text."""

    detections: tuple[Detection, ...]
    severity: str | None
    duration_ms: float

    @property
    def has_threats(self) -> bool:
        return bool(self.detections)

    def at_least(self, min_rank: int) -> tuple[Detection, ...]:
        return tuple(d for d in self.detections if SEVERITY_RANK[d.severity] >= min_rank)


def highest(detections: Iterable[Detection]) -> str | None:
    best = 0
    for detection in detections:
        rank = SEVERITY_RANK[detection.severity]
        if rank > best:
            best = rank
    return SEVERITIES[best - 1] if best else None


class Scanner:
    """Runs stages in order and merges what they find."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = tuple(stages)

    def scan(self, text: str) -> ScanResult:
        started = time.perf_counter()
        if len(self.stages) == 1:
            found = self.stages[0].scan(text)
        else:
            found = []
            for stage in self.stages:
                found.extend(stage.scan(text))
        if not found:
            return ScanResult((), None, (time.perf_counter() - started) * 1000)
        detections = merge(found)
        return ScanResult(detections, highest(detections), (time.perf_counter() - started) * 1000)


def merge(found: list[Detection]) -> tuple[Detection, ...]:
    """Sorted by offset; one detection per (rule, span), the most severe kept."""
    if not found:
        return ()
    if len(found) == 1:
        return (found[0],)
    best: dict[tuple[str, int, int], Detection] = {}
    for detection in found:
        key = (detection.rule_id, detection.start, detection.end)
        kept = best.get(key)
        if kept is None or SEVERITY_RANK[detection.severity] > SEVERITY_RANK[kept.severity]:
            best[key] = detection
    return tuple(sorted(best.values(), key=lambda d: (d.start, d.end, d.rule_id)))


# -- normalised views -----------------------------------------------------------------

# Look-alike letters (Cyrillic, Greek, fullwidth, mathematical...) folded to ASCII,
# one character for one, so offsets stay put.
_CONFUSABLES = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d", "ӏ": "l", "һ": "h",
    "ԛ": "q", "ԝ": "w", "ɡ": "g", "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O",
    "Р": "P", "С": "C", "Т": "T", "У": "Y", "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J", "Ԁ": "D", "Ү": "Y",
    # Greek
    "α": "a", "ο": "o", "ρ": "p", "ν": "v", "τ": "t", "ι": "i", "κ": "k", "υ": "u", "χ": "x", "ε": "e",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
    # Latin look-alikes and dotless i
    "ı": "i", "ℓ": "l", "ɑ": "a",
}  # fmt: skip
_FOLD = {ord(k): v for k, v in _CONFUSABLES.items()}
_FOLD.update({code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)})  # fullwidth ASCII
for _base, _start in ((0x41, 0x1D400), (0x61, 0x1D41A)):  # mathematical bold / italic... letters
    for _block in range(13):
        for _i in range(26):
            _FOLD[_start + _block * 52 + _i] = _base + _i

#: zero-width and invisible characters: removed in the folded view
INVISIBLE = "\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u180e\u034f"
#: bidirectional controls (Trojan Source): removed in the folded view
BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
_HIDDEN = frozenset(INVISIBLE + BIDI)
_HIDDEN_RE = re.compile("[" + INVISIBLE + BIDI + "]")
# Any character the folded view changes: most non-ASCII text (accents, CJK) has
# none, and skips the view (str.translate with a table is slow on non-ASCII text).
# The helper patterns below run on the text's UTF-8 bytes with RE2: linear time,
# and no byte-to-character offset mapping on every match.
_FOLDABLE = re2.compile(
    ("[" + "".join(sorted(_CONFUSABLES)) + INVISIBLE + BIDI + "\uff01-\uff5e\U0001d400-\U0001d6a3]").encode()
)

# Leetspeak undone (one for one): 1gn0r3 -> ignore, 5y5t3m -> system.
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "9": "g", "@": "a", "$": "s", "|": "l", "!": "i", "€": "e"})
# Words mixing letters with leet digits; three of them make the view worth a pass.
# (a digit between letters, or two digits around letters: "y0u", "1gn0r3"; not "4th", "md5")
_LEET_WORD = re2.compile(rb"(?i)\b(?:[a-z]+[013457@$]+[a-z][a-z013457@$]*|[013457@$]+[a-z]+[013457@$][a-z013457@$]*)\b")
_ROT13 = str.maketrans(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", "NOPQRSTUVWXYZABCDEFGHIJKLMnopqrstuvwxyzabcdefghijklm"
)
# ROT13 only works on a model told to decode it: the text names the cipher or decoding.
_ROT13_HINT = re2.compile(rb"(?i)\b(?:rot[ -]?13|caesar|cipher|deciph|decod|rotat)")

# ...and carries ROT13 English: the ROT13 of "the", "and", "you", "your", "is", "to",
# "of", "this", "with", "system", "prompt", "rules", "instructions", "ignore".
_ROT13_WORDS = re2.compile(
    rb"(?i)\b(?:gur|naq|lbh|lbhe|vf|gb|bs|guvf|jvgu|flfgrz|cebzcg|ehyrf|vafgehpgvbaf|vtaber)\b"
)

_BASE64 = re2.compile(rb"[A-Za-z0-9+/_-]{16,}={0,2}")
_HEX = re2.compile(rb"(?i)(?:0x)?(?:[0-9a-f]{2}){8,}|(?:[0-9a-f]{2}[ :,]){7,}[0-9a-f]{2}|(?:\\x[0-9a-f]{2}){8,}")
# Hints found in the rules' own pass (indexes into _HINTS).
_HINTS = (_LEET_WORD, _ROT13_HINT, _ROT13_WORDS, _BASE64, _HEX, _FOLDABLE)
_LEET_AT, _ROT13_HINT_AT, _ROT13_WORDS_AT, _FOLDABLE_AT = 0, 1, 2, 5
_BASE64_AT, _HEX_AT = 3, 4
_BLOB_AT = frozenset({_BASE64_AT, _HEX_AT})
_LETTER = re.compile(rb"[A-Za-z]")
_HEX_STRIP = re.compile(r"0x|\\x|[ :,]", re.I)


def _char_offset(encoded: bytes, byte_offset: int, ascii_only: bool) -> int:
    return byte_offset if ascii_only else len(encoded[:byte_offset].decode("utf-8", "ignore"))


def _leet_words(encoded: bytes) -> int:
    count = 0
    for _ in _LEET_WORD.finditer(encoded):
        count += 1
        if count >= 3:
            break
    return count


def _windows(encoded: bytes, ascii_only: bool, reach: int, most: int = 4) -> list[tuple[int, int]]:
    """Character spans of ``reach`` either side of the first ``most`` ROT13 hints, merged."""
    spans: list[tuple[int, int]] = []
    for count, match in enumerate(_ROT13_HINT.finditer(encoded)):
        if count >= most:
            break
        at = _char_offset(encoded, match.start(), ascii_only)
        start, end = max(0, at - reach), at + reach
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans


def _leet_lines(text: str, encoded: bytes, ascii_only: bool) -> list[tuple[int, str]]:
    """(offset, line) of each line with three or more leet words."""
    if len(text) <= 512:
        return [(0, text)]
    counts: dict[int, int] = {}
    for found, match in enumerate(_LEET_WORD.finditer(encoded)):
        if found >= 1000:
            break
        line = encoded.rfind(b"\n", 0, match.start()) + 1
        counts[line] = counts.get(line, 0) + 1
    lines = []
    for line_start, count in counts.items():
        if count < 3:
            continue
        line_end = encoded.find(b"\n", line_start)
        if line_end < 0:
            line_end = len(encoded)
        start = _char_offset(encoded, line_start, ascii_only)
        lines.append((start, encoded[line_start:line_end].decode("utf-8", "ignore")))
    return lines


def _printable(text: str) -> bool:
    """Decoded bytes that read as text (not an image header, a hash or a key)."""
    if len(text) < 8:
        return False
    good = sum(1 for ch in text if ch.isprintable() or ch in "\n\t\r")
    letters = sum(1 for ch in text if ch.isalpha() or ch == " ")
    return good >= 0.95 * len(text) and letters >= 0.6 * len(text)


def decode_blob(blob: str, kind: str) -> str | None:
    """The text a base64 or hex blob encodes, or None when it is not text."""
    try:
        if kind == "hex":
            raw = binascii.unhexlify(_HEX_STRIP.sub("", blob))
        else:
            padded = blob + "=" * (-len(blob) % 4)
            raw = base64.urlsafe_b64decode(padded) if ("-" in blob or "_" in blob) else base64.b64decode(padded)
        text = raw.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return text if _printable(text) else None


def _without_hidden(text: str) -> tuple[str, list[int]]:
    """``text`` without invisible and bidi characters, and where each kept one was."""
    kept: list[str] = []
    where: list[int] = []
    for index, ch in enumerate(text):
        if ch not in _HIDDEN:
            kept.append(ch)
            where.append(index)
    where.append(len(text))
    return "".join(kept), where


# -- the rules stage --------------------------------------------------------------------


class _Compiled:
    __slots__ = ("rule", "regex", "ascii_regex", "grouped", "validate", "normalised")

    def __init__(self, rule: Rule, pattern: str) -> None:
        self.rule = rule
        self.regex = re2.compile(pattern)
        # The same pattern over UTF-8 bytes: on an ASCII text byte offsets are character
        # offsets, and the str wrapper's per-call encoding and offset mapping (about
        # 60 % of a finditer on a short prompt) is skipped.
        self.ascii_regex = re2.compile(pattern.encode())
        self.grouped = self.regex.groups > 0
        self.validate: Callable[[str], bool] | None = validators.get(rule.validate) if rule.validate else None
        self.normalised = rule.normalised


def _prefilters(pattern: str) -> bool:
    """Whether RE2's prefilter narrows ``pattern`` down: it has words to look for, and not
    ones ordinary prose holds (the prefilter does not rule it out on :data:`_PROBE`)."""
    alone = re2.Filter()
    try:
        alone.Add(pattern)
        alone.Compile()
    except re2.error:
        return False
    return not alone.Match(_PROBE, potential=True)


def _set_of(patterns: Sequence[str], max_mem: int = SET_MAX_MEM) -> Any:
    """An RE2 set of ``patterns``, its lazily built DFA within ``max_mem`` bytes."""
    options = re2.Options()
    options.max_mem = max_mem
    matcher = re2.Set.SearchSet(options)
    for pattern in patterns:
        matcher.Add(pattern)
    matcher.Compile()
    return matcher


class RuleStage:
    """Every pattern rule in a few RE2 set passes, plus the built-in obfuscation detectors."""

    name = "rules"

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self.compiled: list[_Compiled] = []
        self.detectors: dict[str, Rule] = {}
        for rule in rules:
            if rule.detector is not None:
                self.detectors[rule.detector] = rule
            for pattern in rule.patterns:
                self.compiled.append(_Compiled(rule, pattern))
        # Which patterns match, in RE2 set passes, each a lazily built DFA. The patterns with
        # a bounded gap ("{0,n}": up to n words between two keywords) make a state for every
        # combination of partial matches: in a set with all the others, varied text meets
        # new states text after text (53 µs a text, the DFA past +150 MiB after 18,000 texts,
        # still growing); in sets of their own, about 17 µs and +33 MiB, still growing. Most
        # of them need words ordinary text seldom holds ("disregard", "previous"): on a short
        # text RE2's prefilter (FilteredRE2, a pass of a small literal set) names the ones
        # that may match (none on most prose), and a few candidates are searched alone; their
        # sets run for more candidates or a long text (13 µs and +18 MiB, flattening). The
        # few whose words are too common to tell (the prefilter keeps them on _PROBE) sit in a
        # set that always runs. The hints that decide which views are worth making ride in the
        # first set. (benchmarks/scan_dfa.py, docs/scan.md)
        self.aux = len(self.compiled)
        patterns = [compiled.regex.pattern for compiled in self.compiled]
        patterns += [hint.pattern.decode() for hint in _HINTS]
        plain = list(range(self.aux, len(patterns)))  # the hints
        common: list[int] = []  # gapped, but not worth a prefilter
        by_family: dict[str, list[int]] = {}
        for index, compiled in enumerate(self.compiled):
            if not _GAP.search(compiled.regex.pattern):
                plain.append(index)
            elif _prefilters(compiled.regex.pattern):
                by_family.setdefault(compiled.rule.family, []).append(index)
            else:
                common.append(index)
        gated: list[list[int]] = [[] for _ in range(GATED_SETS)]
        for _, indexes in sorted(by_family.items(), key=lambda item: (-len(item[1]), item[0])):
            min(gated, key=len).extend(indexes)  # the largest families first, each to the smallest set
        #: (an RE2 set, the index in ``compiled`` (or aux + hint) of each of its patterns)
        self.matchers: list[tuple[Any, tuple[int, ...]]] = []
        for indexes in (plain, common, *gated):
            if indexes:
                self.matchers.append((_set_of([patterns[index] for index in indexes]), tuple(indexes)))
        #: how many of ``matchers`` always run; the others only when ``prefilter`` says they may match
        self.always = len(self.matchers) - sum(1 for indexes in gated if indexes)
        #: the gated patterns (indexes in ``compiled``), in the prefilter's order
        self.gated = tuple(index for _, indexes in self.matchers[self.always :] for index in indexes)
        self.prefilter: Any = None
        if self.gated:
            self.prefilter = re2.Filter()
            for index in self.gated:
                self.prefilter.Add(patterns[index])
            self.prefilter.Compile()
        self.any_normalised = any(compiled.normalised for compiled in self.compiled)

    def scan(self, text: str) -> list[Detection]:
        return self._scan(text, 0, None)

    def _scan(self, text: str, depth: int, via: str | None) -> list[Detection]:
        found: list[Detection] = []
        if not text:
            return found
        encoded = text.encode()
        hits = self._hits(encoded)
        if not hits:
            # No pattern and no hint: no view is made, so nothing can be found (most texts).
            return found
        ascii_only = text.isascii()
        aux = self.aux
        present = {index - aux for index in hits if index >= aux}
        seen = self._match(text, None, found, via, hits=hits)
        views = text
        if _FOLDABLE_AT in present:
            views = self._folded(text, found, seen, via)
        detectors = self.detectors
        # Leetspeak and ROT13: only the rules that describe intent (not secrets or PII).
        if self.any_normalised:
            if _LEET_AT in present and "leetspeak" in detectors and _leet_words(encoded) >= 3:
                # Only the lines dense in leet words: a view of the whole text would
                # cost a pass over every byte for a few words.
                for start, line in _leet_lines(views, encoded if views is text else views.encode(), ascii_only):
                    self._view(line.translate(_LEET), start, found, seen, "leetspeak", via)
            if _ROT13_HINT_AT in present and _ROT13_WORDS_AT in present and "rot13" in detectors:
                # A model decodes ROT13 when told to: the text near the words that say
                # so is the view (bounded, whatever the size of the text).
                for start, end in _windows(encoded, ascii_only, ROT13_WINDOW):
                    self._view(views[start:end].translate(_ROT13), start, found, seen, "rot13", via)
        if depth < MAX_DECODE_DEPTH and (present & _BLOB_AT) and "encoded_payload" in detectors:
            self._decode(text, encoded, ascii_only, depth, found, via, _HEX_AT in present, _BASE64_AT in present)
        return found

    def _hits(self, view: str | bytes) -> set[int]:
        """Indexes of the patterns (and, from ``aux`` on, hints) that match ``view``: a pass
        a set, and for the gated patterns a search of the prefilter's few candidates or, when
        there are more (or the text is long), a pass of their sets (in chunks when huge, so one
        DFA cache reset never loses a long text's matches)."""
        data = view.encode() if isinstance(view, str) else view
        if len(data) <= CHUNK:
            chunks: Sequence[bytes] = (data,)
        else:
            chunks = [data[start : start + CHUNK] for start in range(0, len(data), CHUNK - CHUNK_OVERLAP)]
        hits: set[int] = set()
        for position, (matcher, indexes) in enumerate(self.matchers):
            if position == self.always and len(data) <= PREFILTER_MAX_BYTES:
                # The gated sets: the prefilter says which of their patterns may match.
                candidates = self.prefilter.Match(data, potential=True) or ()
                if len(candidates) <= FEW_CANDIDATES:
                    # A search each costs less than the sets' passes, and makes no state in their DFAs.
                    compiled, gated = self.compiled, self.gated
                    for candidate in candidates:
                        if compiled[gated[candidate]].ascii_regex.search(data):
                            hits.add(gated[candidate])
                    break
            for chunk in chunks:
                found = matcher.Match(chunk)
                if found:
                    hits.update([indexes[index] for index in found])
        return hits

    def _match(
        self,
        view: str,
        where: list[int] | None,
        found: list[Detection],
        via: str | None,
        normalised_only: bool = False,
        base: int = 0,
        hits: set[int] | None = None,
    ) -> set[str]:
        """Every rule of ``matchers`` that matches ``view``; offsets mapped by ``where``
        (a view with characters removed) or shifted by ``base`` (a slice)."""
        rules: set[str] = set()
        if hits is None:
            hits = self._hits(view)
        if not hits:
            return rules
        compiled_all = self.compiled
        aux = self.aux
        subject: str | bytes = view.encode() if view.isascii() else view
        for hit in sorted(hits):
            if hit >= aux:
                continue
            compiled = compiled_all[hit]
            if normalised_only and not compiled.normalised:
                continue
            rule = compiled.rule
            count = 0
            regex = compiled.regex if subject is view else compiled.ascii_regex
            for match in regex.finditer(subject):
                start, end = match.span(1) if compiled.grouped else match.span()
                if start < 0:
                    start, end = match.span()
                if compiled.validate is not None and not compiled.validate(view[start:end]):
                    continue
                if where is not None:
                    start, end = where[start], (where[end - 1] + 1 if end > start else where[start])
                elif base:
                    start, end = start + base, end + base
                found.append(Detection(rule.id, rule.family, rule.severity, start, end, via=via))
                rules.add(rule.id)
                count += 1
                if count >= MAX_MATCHES_PER_RULE:
                    break
        return rules

    def _view(self, view: str, base: int, found: list[Detection], seen: set[str], kind: str, via: str | None) -> None:
        """Scan a normalised view (at ``base`` in the text, one character for one):
        what only it shows counts, and so does the evasion."""
        extra: list[Detection] = []
        matched = self._match(view, None, extra, via or kind, normalised_only=True, base=base)
        new = matched - seen
        if not new:
            return
        fresh = [d for d in extra if d.rule_id in new]
        found.extend(fresh)
        seen |= new
        detector = self.detectors.get(kind)
        if detector is not None:
            start = min(d.start for d in fresh)
            end = max(d.end for d in fresh)
            found.append(Detection(detector.id, detector.family, detector.severity, start, end, via=via))

    def _folded(self, text: str, found: list[Detection], seen: set[str], via: str | None) -> str:
        """Homoglyphs folded, invisible and bidi characters dropped; evasion reported."""
        detectors = self.detectors
        where: list[int] | None = None
        view = text
        hidden = _HIDDEN_RE.search(text) is not None
        if hidden:
            view, where = _without_hidden(text)
            bidi = detectors.get("bidi")
            invisible = detectors.get("zero_width")
            for index, ch in enumerate(text):
                if ch in BIDI and bidi is not None and ch not in "\u200e\u200f":
                    found.append(Detection(bidi.id, bidi.family, bidi.severity, index, index + 1, via=via))
                    break
            if invisible is not None:
                inside = _INVISIBLE_IN_WORD.findall(text)
                if len(inside) >= 3:
                    first = _INVISIBLE_IN_WORD.search(text)
                    assert first is not None
                    found.append(
                        Detection(invisible.id, invisible.family, invisible.severity, first.start(), first.end(), via=via)
                    )
        folded = view.translate(_FOLD)
        mixed = detectors.get("homoglyph")
        if mixed is not None and folded != view:
            for match in _MIXED_SCRIPT.finditer(text):
                found.append(Detection(mixed.id, mixed.family, mixed.severity, match.start(), match.end(), via=via))
                break
        if folded is not text:
            kind = "homoglyph" if folded != view else "zero_width"
            extra: list[Detection] = []
            matched = self._match(folded, where, extra, via or kind)
            new = matched - seen
            if new:
                fresh = [d for d in extra if d.rule_id in new]
                found.extend(fresh)
                seen |= new
                evasion = detectors.get("evasion")
                if evasion is not None:
                    start = min(d.start for d in fresh)
                    end = max(d.end for d in fresh)
                    found.append(Detection(evasion.id, evasion.family, evasion.severity, start, end, via=via or kind))
        # The leet and ROT13 views work on the folded text (offsets one for one only
        # when nothing was removed: otherwise they stay on the original).
        return folded if where is None else text.translate(_FOLD)

    def _decode(
        self,
        text: str,
        encoded: bytes,
        ascii_only: bool,
        depth: int,
        found: list[Detection],
        via: str | None,
        hex_blobs: bool = True,
        base64_blobs: bool = True,
    ) -> None:
        """Decode base64 and hex blobs and scan what they say, at the blob's offsets."""
        detector = self.detectors["encoded_payload"]
        blobs = 0
        spans: list[tuple[int, int, str]] = []
        for match in _HEX.finditer(encoded) if hex_blobs else ():
            spans.append((match.start(), match.end(), "hex"))
            if len(spans) >= MAX_BLOBS:
                break
        for match in _BASE64.finditer(encoded) if base64_blobs else ():
            if len(spans) >= 4 * MAX_BLOBS:
                break
            start, end = match.span()
            if any(s <= start < e for s, e, _ in spans):
                continue
            blob = match.group()
            # A word run or a path is not base64: real payloads mix cases and digits.
            # Nor is a run of digits and dashes (an id, a timestamp): the base64 of
            # printable text has letters (an ASCII byte's top six bits encode as one).
            if (blob.isalpha() and (blob.islower() or blob.isupper())) or not _LETTER.search(blob):
                continue
            spans.append((start, end, "base64"))
        for byte_start, byte_end, kind in spans:
            if blobs >= MAX_BLOBS:
                break
            decoded = decode_blob(encoded[byte_start:byte_end].decode("ascii"), kind)
            if decoded is None:
                continue
            blobs += 1
            inner = self._scan(decoded, depth + 1, via or kind)
            if not inner:
                continue
            start = _char_offset(encoded, byte_start, ascii_only)
            end = start + (byte_end - byte_start)
            for detection in inner:
                found.append(
                    Detection(
                        detection.rule_id,
                        detection.family,
                        detection.severity,
                        start,
                        end,
                        detection.score,
                        detection.stage,
                        detection.via,
                    )
                )
            found.append(Detection(detector.id, detector.family, detector.severity, start, end, via=via or kind))


_INVISIBLE_IN_WORD = re.compile(r"(?<=\w)[" + INVISIBLE + r"]+(?=\w)")
# A word that mixes Latin letters with Cyrillic or Greek ones (Latin-only and
# Cyrillic-only words are ordinary text).
_MIXED_SCRIPT = re.compile(
    r"\b(?=\w*[A-Za-z])(?=\w*[\u0370-\u03ff\u0400-\u04ff])[A-Za-z\u0370-\u03ff\u0400-\u04ff]{2,}\b"
)


def rot13(text: str) -> str:
    """ROT13 as the scanner applies it (for tests and rule authors)."""
    return codecs.encode(text, "rot13")


def build_scanner(extra_packs: Sequence[str] = (), disable: Sequence[str] = (), stages: Sequence[Stage] = ()) -> Scanner:
    """The rules stage over the built-in packs (plus ``extra_packs``), then ``stages``.

    Raises :class:`gateway_plugins.scan.packs.PackError` for a bad pack. The rules
    stage is immutable, so one built from the same files (same sizes and times) and
    the same ``disable`` list is shared: a reload does not compile the packs again."""
    from gateway_plugins.scan.packs import builtin_packs, load_rules

    files = []
    for path in [*builtin_packs(), *map(Path, extra_packs)]:
        try:
            status = path.stat()
            files.append((str(path), status.st_mtime_ns, status.st_size))
        except OSError:
            files.append((str(path), 0, 0))
    key = (tuple(files), tuple(sorted(disable)))
    stage = _BUILT.get(key)
    if stage is None:
        stage = RuleStage(load_rules(extra_packs, disable))
        if len(_BUILT) >= 8:
            _BUILT.clear()
        _BUILT[key] = stage
    return Scanner([stage, *stages])


_BUILT: dict[tuple[Any, ...], RuleStage] = {}
