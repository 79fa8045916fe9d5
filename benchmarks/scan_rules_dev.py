"""The rules stage before and after a change, on every labelled text except the held-out split (v9).

    mkdir -p /tmp/before && git archive main plugins/scan/rules | tar -x -C /tmp/before   # the packs before
    python benchmarks/scan_rules_dev.py --before /tmp/before/plugins/scan/rules [--scores SCORES.json] [--show]

Rows come from ``scan_corpus.build`` with the development split set aside (as in scan_classifier_dev.py, plus its
300 long chat texts); rows of split ``heldout`` are dropped as they are built, before any text is looked at.
For each source: rules-alone recall of its attacks and the benign texts each rule set flags (any detection, as
scan_classifier_bench.py counts), before (the packs in ``--before``) and after (the packs in
plugins/scan/rules). The v9 acceptance pool (docs/scan-classifier-v9-plan.md) is the development split's benign
texts and the training benign sources (chatterbot, chitchat, stdlib, Django, OVOS): the texts only the new rules
flag must stay under 0.2 % of it. With ``--scores`` (written by ``scan_classifier_dev.py --rule-misses``, the
model fitted without the development split), rules + model on the development split, before and after.
``--show`` prints the benign texts only the new rules flag and the development attacks both stages still miss.

v13 (docs/scan-classifier-v13-plan.md): ``--v11-data`` adds the six packages looked at before v10 as training rows
(``scan_corpus.V11_TRAIN``; every v10 package must be installed, the five held-out ones only so that v11's leak
check can run: their rows are split ``heldout`` and dropped like every held-out row). For the six, rules + the
**shipped** model (v4, at its card threshold; it was not trained on them) before and after; with ``--show``, the
six's attacks that neither the rules after nor the shipped model catch.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import scan_classifier_bench as bench  # noqa: E402
import scan_classifier_dev as dev_protocol  # noqa: E402
import scan_corpus  # noqa: E402
import train_scan_classifier as trainer  # noqa: E402

#: training benign sources of the v9 acceptance pool (by the source's first word), with every dev-split benign text
POOL_TRAIN = ("chatterbot", "chitchat", "stdlib", "django", "djangoi18n", "ovos")
LIMIT = 0.002


def _group(source: str) -> str:
    return source if source in ("spikee-fp", "spikee-documents", "spikee-composed", "synthetic-embedded") \
        else source.split("-")[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="directory of the packs before the change")
    ap.add_argument("--scores", type=Path, default=None, help="scan_classifier_dev.py --rule-misses's file")
    ap.add_argument("--show", action="store_true")
    ap.add_argument("--v11-data", action="store_true", help="v13: the six training-side packages too (V11_TRAIN)")
    args = ap.parse_args(argv)
    scan_corpus.V11_TRAIN = args.v11_data

    rows = [r for r in scan_corpus.build(trainer.SEED, dev_protocol.DEV_SOURCES) if r["split"] != "heldout"]
    rows += dev_protocol.long_chat_texts([r for r in rows if r["split"] == "dev"])
    assert not any(r["split"] == "heldout" for r in rows)
    before, after = bench._rules_stage(args.before), bench._rules_stage()
    hits = [(bool(before.scan(r["text"])), bool(after.scan(r["text"]))) for r in rows]

    attacks: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    benign: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0, 0])
    pool = [0, 0]
    added_texts = []
    for r, (b, a) in zip(rows, hits, strict=True):
        key = f"{r['split']}:{_group(r['source'])}"
        if r["label"] == "attack":
            attacks[key][0] += 1
            attacks[key][1] += b
            attacks[key][2] += a
            continue
        benign[key][0] += 1
        benign[key][1] += b
        benign[key][2] += a
        benign[key][3] += a and not b
        if r["split"] == "dev" or _group(r["source"]) in POOL_TRAIN:
            pool[0] += 1
            pool[1] += a and not b
        if a and not b:
            added_texts.append((key, r["text"]))
    print("attacks, rules alone (texts, caught before, caught after):")
    for key, (n, b, a) in sorted(attacks.items()):
        print(f"  {key:28} {n:6} {b:6} ({b / n:.3f}) {a:6} ({a / n:.3f})")
    print("benign, rules alone (texts, flagged before, flagged after, flagged only after):")
    for key, (n, b, a, new) in sorted(benign.items()):
        print(f"  {key:28} {n:6} {b:6} {a:6} {new:6}")
    share = pool[1] / pool[0]
    print(f"acceptance pool (dev-split benign + training {', '.join(POOL_TRAIN)}): {pool[0]} texts, "
          f"{pool[1]} flagged only by the new rules = {share:.4%} (limit {LIMIT:.1%}): "
          f"{'pass' if share < LIMIT else 'FAIL'}")

    if args.scores:
        data = json.loads(args.scores.read_text("utf-8"))
        thr, scores = data["threshold"], data["scores"]
        dev = [(r, h) for r, h in zip(rows, hits, strict=True) if r["split"] == "dev"]
        for name, i in (("before", 0), ("after", 1)):
            caught = collections.Counter()
            total = collections.Counter()
            fp = 0
            for r, h in dev:
                either = h[i] or scores[r["text"]] >= thr
                if r["label"] == "attack":
                    total[r["source"]] += 1
                    caught[r["source"]] += either
                else:
                    fp += either
            n_benign = sum(r["label"] == "benign" for r, _ in dev)
            print(f"development split, rules {name} + model: recall {sum(caught.values())}/{sum(total.values())} "
                  f"= {sum(caught.values()) / sum(total.values()):.4f} "
                  f"({', '.join(f'{s} {caught[s]}/{total[s]}' for s in sorted(total))}), "
                  f"false positives {fp}/{n_benign} = {fp / n_benign:.4f}")
        if args.show:
            print("\ndevelopment attacks both stages still miss:")
            for r, h in dev:
                if r["label"] == "attack" and not h[1] and scores[r["text"]] < thr:
                    print(json.dumps({"source": r["source"], "family": r["family"], "text": r["text"]},
                                     ensure_ascii=False))
    if args.v11_data:
        from gateway_plugins.scan import classifier as clf

        shipped = clf.InjectionClassifier.load()
        six = [(r, h, bool(shipped.scan(r["text"]))) for r, h in zip(rows, hits, strict=True)
               if r["source"] in scan_corpus.V11_TRAIN_SOURCES]
        assert all(r["split"] == "train" for r, _, _ in six)
        for name, i in (("before", 0), ("after", 1)):
            caught, total, fp, n_benign = collections.Counter(), collections.Counter(), 0, 0
            for r, h, m in six:
                if r["label"] == "attack":
                    total[r["source"]] += 1
                    caught[r["source"]] += h[i] or m
                else:
                    n_benign += 1
                    fp += h[i] or m
            print(f"the six (training side), rules {name} + shipped model ({shipped.rule_id} at {shipped.threshold}): "
                  f"recall {sum(caught.values())}/{sum(total.values())} "
                  f"({', '.join(f'{s} {caught[s]}/{total[s]}' for s in sorted(total))}), "
                  f"benign flagged {fp}/{n_benign}")
        if args.show:
            print("\nthe six's attacks neither the rules (after) nor the shipped model catch:")
            for r, h, m in six:
                if r["label"] == "attack" and not h[1] and not m:
                    print(json.dumps({"source": r["source"], "family": r["family"], "text": r["text"]},
                                     ensure_ascii=False))
    if args.show:
        print("\nbenign texts only the new rules flag:")
        for key, text in added_texts:
            ids = sorted({d.rule_id for d in after.scan(text)} - {d.rule_id for d in before.scan(text)})
            print(json.dumps({"where": key, "new_rules": ids, "text": text[:600]}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
