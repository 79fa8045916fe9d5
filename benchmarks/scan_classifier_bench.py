"""Figures for the scan plugin's learned stage: latency alone, quality alone and with the rules.

    python benchmarks/scan_classifier_bench.py                       # dev set + held-out split + latency
    python benchmarks/scan_classifier_bench.py --data other.jsonl    # any JSONL of the dev-set schema

Latency: the stage alone (``InjectionClassifier.scan``) on one core, a 4 KB text and a 300-byte one, p50/p99
over many runs after a warm-up. Quality: recall per family and false-positive rate for the model alone, for the
rules alone and for both together (rules from ``gateway_plugins.scan.engine`` when the scan plugin is installed;
otherwise only the model's figures are printed). The held-out split is benchmarks/scan_corpus.py's, chosen by
source; the dev set is /work/shared/data/scan/dev.jsonl (never trained on; the threshold was picked looking at it).

v10 (docs/scan-classifier-v10-plan.md): the held-out split is printed as the **original** one (the 133 attacks and
2,962 benign texts of bastioncorpus, jailbreak-corpus-mini, chatterbot es/de/it/pt and the stdlib's held-out
modules), the v10 sources alone, the **enlarged** one (both), the enlarged one without the packages looked at
before v10, and per-source totals. ``--original-only`` builds the original split alone (the v10 packages need not
be installed; a missing one is skipped with a note on stderr either way).

v11 attempt (docs/scan-classifier-v11-plan.md): ``--v11-split`` treats the six packages looked at before v10 as
training data (``scan_corpus.V11_TRAIN``), so the held-out split is the original one plus the five v10 packages
found new (v11's held-out split), printed as the original split, the five alone, and both, with per-source totals.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gateway_plugins.scan import classifier as clf  # noqa: E402

DEV = Path(os.environ.get("SCAN_DEV_SET", ROOT.parent.parent / "shared" / "data" / "scan" / "dev.jsonl"))
if not DEV.is_file():
    DEV = Path("/work/shared/data/scan/dev.jsonl")

_PARA = (
    "The quarterly review covered hiring, the new office in Porto and the migration of the billing service to the "
    "managed database. Finance asked each team to send updated forecasts by Friday; the infrastructure group noted "
    "that the staging cluster will be rebuilt next week, so deploys pause on Wednesday afternoon. "
)


def _text(size: int) -> str:
    return (_PARA * (size // len(_PARA) + 1))[:size]


def latency(model: clf.InjectionClassifier, size: int, runs: int) -> dict:
    """Wall-clock and CPU-time percentiles of ``scan`` on one text of ``size`` bytes.

    CPU time (``time.thread_time``) is what the stage costs one core; wall time also counts the moments
    this process waited for a core, which on a shared machine can be most of it.
    """
    text = _text(size)
    for _ in range(50):
        model.scan(text)
    wall, cpu = [], []
    for _ in range(runs):
        w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        model.scan(text)
        cpu.append((time.thread_time_ns() - c0) / 1e6)
        wall.append((time.perf_counter_ns() - w0) / 1e6)
    wall.sort()
    cpu.sort()

    def pct(xs: list[float], q: float) -> float:
        return round(xs[int(q * (len(xs) - 1))], 3)

    return {
        "bytes": len(text.encode()),
        "runs": runs,
        "cpu_p50_ms": pct(cpu, 0.5),
        "cpu_p99_ms": pct(cpu, 0.99),
        "wall_p50_ms": pct(wall, 0.5),
        "wall_p99_ms": pct(wall, 0.99),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def _rules_stage(rules_dir: Path | None = None):
    """The scan plugin's rules stage with every pack of ``rules_dir`` (the shipped ones by default),
    or None when the plugin is not installed."""
    try:
        from gateway_plugins.scan import engine, packs
    except ImportError:
        return None
    rules_dir = rules_dir or Path(engine.__file__).parent / "rules"
    rules = [r for p in sorted(rules_dir.glob("*.yaml")) for r in packs.load_pack(p)]
    return engine.RuleStage(rules)


def quality(rows: list[dict], detect) -> dict:
    """``detect(text) -> bool`` over labelled rows: recall per family, overall recall, FPR."""
    fam: dict[str, list[bool]] = collections.defaultdict(list)
    benign: list[bool] = []
    hard: list[bool] = []
    for r in rows:
        hit = detect(r["text"])
        if r["label"] == "attack":
            fam[r["family"]].append(hit)
        else:
            benign.append(hit)
            if r.get("hard_negative") or r.get("technique") == "hard_negative":
                hard.append(hit)
    attacks = [h for v in fam.values() for h in v]
    out = {
        "recall": round(sum(attacks) / len(attacks), 4) if attacks else None,
        "fpr": round(sum(benign) / len(benign), 4) if benign else None,
        "false_positives": sum(benign),
        "n_attack": len(attacks),
        "n_benign": len(benign),
        "recall_by_family": {f: f"{sum(v)}/{len(v)} = {sum(v) / len(v):.3f}" for f, v in sorted(fam.items())},
    }
    if hard:
        out["fpr_hard_negatives"] = round(sum(hard) / len(hard), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, action="append", help="JSONL file(s) of the dev-set schema")
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--threshold", type=float, default=None, help="override the model card's threshold")
    ap.add_argument("--no-heldout", action="store_true")
    ap.add_argument("--original-only", action="store_true", help="the original held-out split only (no v10 sources)")
    ap.add_argument("--v11-split", action="store_true",
                    help="v11's held-out split: the original one and the five v10 packages found new (the other six "
                         "are v11's training sources)")
    ap.add_argument("--model", type=Path, default=None, help="another weights file (default: the shipped model)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    model = clf.InjectionClassifier.load(args.model, threshold=args.threshold)
    load_ms = (time.perf_counter() - t0) * 1000
    print(f"model {model.rule_id}  threshold {model.threshold}  load {load_ms:.0f} ms "
          f"(first import builds the normalisation tables)")
    print("latency, stage alone, one core:")
    for size in (4096, 300):
        print("  ", json.dumps(latency(model, size, args.runs)))

    rules = _rules_stage()
    if rules is None:
        print("rules stage not installed (gateway_plugins.scan.engine): model-only figures")

    @functools.cache
    def model_hit(text: str) -> bool:
        return bool(model.scan(text))

    @functools.cache
    def rules_hit(text: str) -> bool:
        return bool(rules.scan(text))

    sets: list[tuple[str, list[dict]]] = []
    for path in args.data or [DEV]:
        sets.append((str(path), [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]))
    if not args.no_heldout:
        import scan_corpus

        scan_corpus.V11_TRAIN = args.v11_split and not args.original_only  # the original rows are the same either way
        report: dict = {}
        held = [r for r in scan_corpus.build(enlarged_heldout=not args.original_only, report=report)
                if r["split"] == "heldout"]
        new = scan_corpus.V10_HELDOUT
        original = [r for r in held if r["source"] not in new]
        sets.append(("original held-out split (by source)", original))
        sets.append(("original held-out: bastioncorpus only", [r for r in original if r["source"] == "bastioncorpus"]))
        if scan_corpus.V11_TRAIN:
            print("v10's packages (after de-duplication and caps): training (v11) or held out")
            _print_sources(report, lambda name: "training" if name in scan_corpus.V11_TRAIN_SOURCES else "held out")
            sets.append(("v11 held-out sources only (the five v10 packages found new)",
                         [r for r in held if r["source"] in new]))
            sets.append(("v11 held-out split (original + the five)", held))
        elif not args.original_only:
            print("v10 held-out sources (after de-duplication and caps; None: not installed):")
            _print_sources(report)
            earlier = {name for name, v in new.items() if v[3]}
            sets.append(("v10 sources only", [r for r in held if r["source"] in new]))
            sets.append(("enlarged held-out split (original + v10)", held))
            sets.append(("enlarged held-out without the packages looked at before v10",
                         [r for r in held if r["source"] not in earlier]))
    for name, rows in sets:
        print(f"\n== {name}: {len(rows)} texts")
        print("model only:  ", json.dumps(quality(rows, model_hit)))
        if rules is not None:
            print("rules only:  ", json.dumps(quality(rows, rules_hit)))
            print("rules+model: ", json.dumps(quality(rows, lambda t: rules_hit(t) or model_hit(t))))
    if not args.no_heldout:
        print("\n== held-out totals per source: attacks caught / attacks, benign flagged / benign "
              "(model | rules | rules+model)")
        for source in sorted({r["source"] for r in held}):
            print("  ", source, json.dumps(per_source([r for r in held if r["source"] == source], model_hit,
                                                      rules_hit if rules is not None else None)))
    return 0


def _print_sources(report: dict, role=None) -> None:
    """One line per v10 package: its pinned distribution, license, (role) and row counts."""
    import scan_corpus

    for name, counts in report.items():
        distribution, version, license_, _earlier = scan_corpus.V10_HELDOUT[name]
        part = f", {role(name)}" if role is not None else ""
        print(f"   {name} {distribution}=={version} ({license_}){part}: {json.dumps(counts)}")


def per_source(rows: list[dict], model_hit, rules_hit) -> dict:
    """Totals for one source: attacks caught and benign texts flagged by each stage and by both."""
    att = [r["text"] for r in rows if r["label"] == "attack"]
    ben = [r["text"] for r in rows if r["label"] != "attack"]
    stages = {"model": model_hit}
    if rules_hit is not None:
        stages |= {"rules": rules_hit, "both": lambda t: rules_hit(t) or model_hit(t)}
    out = {}
    for name, hit in stages.items():
        out[name] = {"attacks": f"{sum(map(hit, att))}/{len(att)}", "benign_flagged": f"{sum(map(hit, ben))}/{len(ben)}"}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
