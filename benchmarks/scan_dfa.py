"""What the scan's rules cost on varied text, not on one prompt and a counter: time per text and memory.

Why: every other benchmark sends one prompt with a counter in it (benchmarks/wrk_peers.lua), so the rule
sets' lazily built DFAs (plugins/scan/engine.py, ``SET_MAX_MEM``) meet the same few states on every request:
a few µs a text and flat memory. Real prompts differ word by word, and a DFA of many patterns with bounded
word gaps (``(?:[\\w'-]+[^\\w\\n]+){0,8}?``) has states for every combination of partial matches, built as
text reaches them. This measures both on varied English (three random sentences of the standard library's
docstrings a text: offline, no data set needed) and on the benchmarks' kind of prompt, for the shipped
layout (most gapped patterns behind RE2's prefilter, plugins/scan/engine.py ``RuleStage``) and for the
earlier ones (see ``layout_pass``), so a change to the rules or the engine can be judged on both. It
asserts nothing.

    .venv/bin/python -m benchmarks.scan_dfa                  # ~2 min
    TEXTS=3000 ROUNDS=6 .venv/bin/python -m benchmarks.scan_dfa

Each layout runs in a process of its own (memory is per process); RSS growth is the process's resident
memory after each round of ``TEXTS`` new texts less before the first.
"""

from __future__ import annotations

import importlib
import os
import random
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

from benchmarks.stream_client import letters  # a counter in letters, as the benchmarks' prompts

#: modules whose docstrings give varied, ordinary English sentences
MODULES = (
    "os sys re json http.client asyncio logging collections itertools functools email urllib.request argparse "
    "subprocess threading socket ssl pathlib datetime decimal fractions statistics random string textwrap "
    "unittest doctest inspect ast dis tokenize sqlite3 csv zipfile tarfile shutil tempfile glob pickle copy "
    "pprint enum dataclasses contextlib abc io codecs locale gettext calendar time heapq bisect array weakref "
    "types operator queue sched selectors signal mmap xml.etree.ElementTree html.parser http.server smtplib "
    "imaplib ftplib uuid hashlib hmac secrets base64 binascii struct zlib gzip bz2 lzma configparser netrc "
    "plistlib wave colorsys cmd shlex"
).split()
BENCH_PROMPT = (
    "Write one sentence that explains what an API gateway in front of a large language model does, "
    "for a new engineer. qwhrtzxkvbnm "
)


def sentences() -> list[str]:
    """Distinct sentences of 20 to 300 characters from the standard library's docstrings."""
    warnings.simplefilter("ignore")
    found: dict[str, None] = {}
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for attribute in dir(module):
            doc = getattr(getattr(module, attribute, None), "__doc__", None)
            if isinstance(doc, str) and len(doc) > 80:
                for sentence in re.split(r"(?<=[.!?]) ", " ".join(doc.split())):
                    if 20 < len(sentence) < 300:
                        found[sentence] = None
    return list(found)


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def layout_pass(layout: str) -> tuple[str, Callable[[bytes], object]]:
    """A label and what one text costs the shipped rules' patterns and hints in a layout:
    as the scan plugin runs them (``shipped``: RE2 sets, the gapped patterns behind RE2's
    prefilter), as one RE2 set (``one``: the layout before 2026-12-03, 256 MB),
    with the gapped patterns in three sets by family beside one of the rest (``gapsets``: the
    layout of 2026-12-03 morning) or as one set per family (``family``)."""

    from gateway_plugins.scan.engine import _GAP, _HINTS, SET_MAX_MEM, _set_of, build_scanner

    stage = build_scanner([], [], ()).stages[0]
    if layout == "shipped":
        gated = len(stage.matchers) - stage.always
        return f"shipped: {stage.always} sets, {gated} behind a prefilter", stage._hits
    patterns = [(compiled.rule.family, compiled.regex.pattern) for compiled in stage.compiled]
    patterns += [("hints", hint.pattern.decode()) for hint in _HINTS]
    budget = SET_MAX_MEM
    if layout == "one":
        groups, budget = [[pattern for _, pattern in patterns]], 256 << 20
        label = "one set (before 2026-12-03)"
    elif layout == "gapsets":
        by_family: dict[str, list[str]] = {}
        for family, pattern in patterns:
            if _GAP.search(pattern):
                by_family.setdefault(family, []).append(pattern)
        groups = [[pattern for _, pattern in patterns if not _GAP.search(pattern)], [], [], []]
        for _, group in sorted(by_family.items(), key=lambda item: (-len(item[1]), item[0])):
            min(groups[1:], key=len).extend(group)  # as RuleStage placed them that morning
        label = "the gapped patterns in three sets (2026-12-03 morning)"
    else:
        families = sorted({family for family, _ in patterns})
        groups = [[pattern for family, pattern in patterns if family == name] for name in families]
        label = f"one set per family ({len(groups)})"
    built = [_set_of(group, budget) for group in groups]

    def sets(text: bytes) -> None:
        for matcher in built:
            matcher.Match(text)

    return label, sets


def measure(layout: str, texts: int, rounds: int) -> None:
    """One layout, in this process: varied text round by round, then the benchmarks' prompt."""
    label, run = layout_pass(layout)
    pool = sentences()
    rng = random.Random(2)
    before = rss_mib()
    for round_index in range(rounds):
        batch = [" ".join(rng.sample(pool, 3)).encode() for _ in range(texts)]
        started = time.perf_counter()
        for text in batch:
            run(text)
        per_text = (time.perf_counter() - started) / texts * 1e6
        print(f"| {label} | varied, round {round_index + 1} | {per_text:.1f} | +{rss_mib() - before:.1f} |")
    for count in range(2 * texts):  # the benchmarks' kind of prompt: warm, then timed
        text = (BENCH_PROMPT + letters(count)).encode()
        if count == texts:
            started = time.perf_counter()
        run(text)
    per_text = (time.perf_counter() - started) / texts * 1e6
    print(f"| {label} | one prompt and a counter (warm) | {per_text:.1f} | +{rss_mib() - before:.1f} |")


def main() -> None:
    texts = int(os.environ.get("TEXTS", "3000"))
    rounds = int(os.environ.get("ROUNDS", "6"))
    if len(sys.argv) > 1:
        measure(sys.argv[1], texts, rounds)
        return
    print(f"Sentences: {len(sentences())} from the standard library's docstrings; {texts} texts a round.\n")
    print("| layout | text | µs a text | RSS growth MiB |\n|---|---|---:|---:|", flush=True)
    for layout in ("shipped", "gapsets", "one", "family"):
        subprocess.run([sys.executable, "-m", "benchmarks.scan_dfa", layout], check=True)


if __name__ == "__main__":
    main()
