"""Quality and speed of the scan plugin's detector on a labelled JSONL set.

    python benchmarks/scan_quality.py [FILE.jsonl ...] [--min-severity MEDIUM] [--rules PACK] [--misses]
    python benchmarks/scan_quality.py --classifier       # rules + the learned stage (docs/scan-classifier.md)

Each line: ``{"text", "label": "attack"|"benign", "family", "severity", "hard_negative"}``
(the schema of ../shared/data/scan/dev.jsonl; see its README). An attack counts as
caught when the scanner reports any detection at or above ``--min-severity`` (the
plugin's default: MEDIUM); a benign text with such a detection is a false positive.

Prints recall per family and overall, the false-positive rate (all benign and hard
negatives), results by stage and by view (which normalisation showed the finding),
per-text latency p50/p99, and the latency of a 4 KB prompt with every pack on
(single thread, one core).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SET = ROOT.parent / "shared" / "data" / "scan" / "dev.jsonl"  # ../shared beside the repository

from gateway_plugins.scan.engine import SEVERITY_RANK, build_scanner  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def timed(scan, text: str, repeat: int, clock=time.thread_time) -> list[float]:
    """Microseconds per call. ``time.thread_time`` (the default) counts the CPU this
    thread used, so a loaded machine's other processes do not inflate the figure;
    pass ``time.perf_counter`` for wall time."""
    samples = []
    for _ in range(repeat):
        started = clock()
        scan(text)
        samples.append((clock() - started) * 1e6)
    return samples


def four_kb_prompt(benign: list[str]) -> str:
    """A 4 KB chat prompt of ordinary and hard-negative prose, code and numbers."""
    filler = benign or ["How do I center a div with flexbox? Explain with an example."]
    parts: list[str] = []
    size = 0
    index = 0
    while size < 4096:
        part = filler[index % len(filler)]
        parts.append(part)
        size += len(part) + 1
        index += 1
    return "\n".join(parts)[:4096]


def _drive(coroutine):
    """Run a hook that never suspends (as scan's request hook on a small body) without a loop."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("the hook suspended")


def hot_path(rules: list[str], disable: list[str], classifier: bool = False) -> None:
    """The scan plugin's ``request`` hook on a clean 300-byte chat request, in microseconds:
    a text seen for the first time (scanned) and one seen before (a cache hit)."""
    import msgspec

    from gateway import Exchange
    from gateway_plugins.scan import ClassifierConfig, Config, Scan

    plugin = Scan(Config(rules=rules[0] if rules else None, disable=disable,
                         classifier=ClassifierConfig(enabled=classifier)))
    question = (
        "Could you suggest a three-day walking itinerary for Lisbon in spring, with a cafe for lunch each day "
        "and one museum that is not too crowded? "
    )
    headers = {"Content-Type": "application/json"}

    def body(serial: int) -> bytes:
        text = f"{question}We arrive on day {serial}."
        document = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "You are a helpful travel guide."},
                                                         {"role": "user", "content": text}]}  # fmt: skip
        return msgspec.json.encode(document)

    size = len(body(1000))
    for label, fresh in (("first seen (scanned)", True), ("seen before (cache hit)", False)):
        samples = []
        for serial in range(3000):
            exchange = Exchange(None, method="POST", path="/v1/chat/completions", headers=headers,
                                body=body(100000 + serial if fresh else 1))  # fmt: skip
            started = time.thread_time()
            _drive(plugin.request(exchange))
            samples.append((time.thread_time() - started) * 1e6)
        print(
            f"hot path{' (classifier on)' if classifier else ''}, clean {size}-byte chat request, {label}:"
            f" p50 {percentile(samples, 0.5):.1f} us, p99 {percentile(samples, 0.99):.1f} us"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path, default=[DEFAULT_SET])
    parser.add_argument("--min-severity", default="MEDIUM", choices=list(SEVERITY_RANK))
    parser.add_argument("--rules", action="append", default=[], help="an extra rule pack (repeatable)")
    parser.add_argument("--disable", action="append", default=[], help="a rule id to turn off (repeatable)")
    parser.add_argument("--misses", action="store_true", help="print missed attacks and false positives")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per text")
    parser.add_argument("--classifier", action="store_true", help="add the learned stage after the rules")
    args = parser.parse_args()

    stages = []
    if args.classifier:
        from gateway_plugins.scan.classifier import InjectionClassifier

        stages.append(InjectionClassifier.load())
    scanner = build_scanner(args.rules, args.disable, stages)
    threshold = SEVERITY_RANK[args.min_severity]
    rows = []
    for path in args.files:
        with path.open(encoding="utf-8") as lines:
            rows.extend(json.loads(line) for line in lines if line.strip())

    caught: Counter[str] = Counter()
    total: Counter[str] = Counter()
    severity_ok = 0
    false_positives = hard_fp = hard_total = benign_total = 0
    by_stage: Counter[str] = Counter()
    by_view: Counter[str] = Counter()
    by_family_found: Counter[str] = Counter()
    latencies: list[float] = []
    misses: list[str] = []
    for row in rows:
        text = row["text"]
        result = scanner.scan(text)
        latencies.append(statistics.median(timed(scanner.scan, text, args.repeat)))
        acted = result.at_least(threshold)
        if row["label"] == "attack":
            family = row["family"]
            total[family] += 1
            if acted:
                caught[family] += 1
                best = max(SEVERITY_RANK[d.severity] for d in acted)
                if row.get("severity") is None or best >= SEVERITY_RANK[row["severity"]]:
                    severity_ok += 1
                for detection in acted:
                    by_stage[detection.stage] += 1
                    by_view[detection.via or "as is"] += 1
                    by_family_found[detection.family] += 1
            else:
                misses.append(f"MISS [{family}/{row.get('technique')}] {text[:160]!r}")
        else:
            benign_total += 1
            hard = bool(row.get("hard_negative"))
            hard_total += hard
            if acted:
                false_positives += 1
                hard_fp += hard
                ids = ",".join(sorted({d.rule_id for d in acted}))
                misses.append(f"FP   [{ids}] {text[:160]!r}")

    attacks = sum(total.values())
    print(f"set: {', '.join(str(p) for p in args.files)}  ({attacks} attacks, {benign_total} benign)")
    print(f"threshold: detections at or above {args.min_severity}\n")
    print(f"{'family':<20} {'caught':>7} {'total':>6} {'recall':>7}")
    for family in sorted(total):
        print(f"{family:<20} {caught[family]:>7} {total[family]:>6} {caught[family] / total[family]:>7.3f}")
    overall = sum(caught.values()) / attacks if attacks else 0.0
    print(f"{'overall':<20} {sum(caught.values()):>7} {attacks:>6} {overall:>7.3f}")
    if attacks:
        print(f"caught at or above the labelled severity: {severity_ok}/{attacks} ({severity_ok / attacks:.3f})")
    if benign_total:
        print(f"\nfalse-positive rate: {false_positives}/{benign_total} = {false_positives / benign_total:.3f}")
    if hard_total:
        print(f"  on hard negatives: {hard_fp}/{hard_total} = {hard_fp / hard_total:.3f}")
    print("\ndetections on caught attacks, by stage:", dict(by_stage))
    print("  by view:", dict(by_view))
    print("  by family:", dict(by_family_found))
    print(
        f"\nper-text CPU time (median of {args.repeat} runs each, {len(rows)} texts):"
        f" p50 {percentile(latencies, 0.5):.1f} us, p99 {percentile(latencies, 0.99):.1f} us"
    )
    benign_texts = [row["text"] for row in rows if row["label"] == "benign"]
    prompt = four_kb_prompt(benign_texts)
    samples = timed(scanner.scan, prompt, 2000)
    wall = timed(scanner.scan, prompt, 2000, time.perf_counter)
    print(
        f"4 KB prompt ({len(prompt.encode())} bytes, every pack on, {len(scanner.stages)} stage(s),"
        f" detections {len(scanner.scan(prompt).detections)}):\n"
        f"  CPU time  p50 {percentile(samples, 0.5):.1f} us, p99 {percentile(samples, 0.99):.1f} us\n"
        f"  wall time p50 {percentile(wall, 0.5):.1f} us, p99 {percentile(wall, 0.99):.1f} us"
        f" (load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )
    hot_path(args.rules, args.disable, args.classifier)
    if args.misses and misses:
        print("\n" + "\n".join(misses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
