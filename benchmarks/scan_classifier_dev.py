"""The development protocol of the scan classifier: choices are judged here, never on the held-out split.

    python benchmarks/scan_classifier_dev.py                     # the shipped settings
    python benchmarks/scan_classifier_dev.py --c-binary 8 32 128  # compare regularisation strengths
    python benchmarks/scan_classifier_dev.py --benign-share '{"synthetic": 0.32, ...}' '{...}'  # compare shares
    python benchmarks/scan_classifier_dev.py --v5-data [--without honeypot] [--v5-embed]  # v5's candidate sources
    python benchmarks/scan_classifier_dev.py --attack-weight '{"synthetic-embedded": 2}' --attack-windows best  # v6
    python benchmarks/scan_classifier_dev.py --embedding  # v7: v4 and the static-embedding variants A, B, C
    python benchmarks/scan_classifier_dev.py --mlp  # v8: v4 and the small-MLP variants A, B, C, D
    python benchmarks/scan_classifier_dev.py --mlp-latency  # v8: the stage's time with each variant's shape
    python benchmarks/scan_classifier_dev.py --rule-misses [SCORES.json]  # v9: attacks neither stage catches
    python benchmarks/scan_classifier_dev.py --v11-data  # v11 attempt: the six packages looked at before v10 train
    python benchmarks/scan_classifier_dev.py --v11-data --c-binary 512 2048 8192 32768  # v12 attempt: C on v11's data
    python benchmarks/scan_classifier_dev.py --static  # v14: v4 and the model2vec variants A, B, C, D, and their latency

Whole training sources written by other people (hermes-jailbench, agent-injection-bench, agentprobe-injection
attacks; chitchat-dataset conversations and those packages' benign texts; since v4 also django.contrib's docstrings
and comments and ovos-skill-alerts' utterances) are set aside as a development split,
by source, like the held-out split: the model is fitted on the rest and judged on them (recall at the model
card's threshold, recall at 1 % and 2 % false positives on the development benign texts) and on the scan dev
set (/work/shared/data/scan/dev.jsonl, model alone and with the rules). The held-out split is not built here.
The shipped model is then trained on everything but the held-out split (benchmarks/train_scan_classifier.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import scan_classifier_bench as bench  # noqa: E402
import scan_classifier_variants as variants  # noqa: E402
import scan_corpus  # noqa: E402
import train_scan_classifier as trainer  # noqa: E402

from gateway_plugins.scan import classifier as clf  # noqa: E402

DEV_SOURCES = ("hermes", "aib", "agentprobe", "chitchat", "django-contrib", "ovos-alerts")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--c-binary", type=float, nargs="+", default=[trainer.C_BINARY])
    ap.add_argument("--bits", type=int, nargs="+", default=[trainer.BITS])
    ap.add_argument("--attack-share", type=json.loads, default=None, help='JSON, e.g. {"synthetic": 0.5, ...}')
    ap.add_argument("--benign-share", type=json.loads, nargs="+", default=[None],
                    help='JSON, one model per value, e.g. {"synthetic": 0.32, ...} (default: the script\'s)')
    ap.add_argument("--window", type=int, nargs=2, default=None, metavar=("WINDOW", "STRIDE"))
    ap.add_argument("--v11-data", action="store_true",
                    help="v11 attempt: the six packages looked at before v10 as training rows (scan_corpus.V11_TRAIN; "
                         "every v10 package must be installed), with the v11 benign shares")
    ap.add_argument("--v5-data", action="store_true", help="with v5's candidate sources (scan_corpus.V5_SOURCES)")
    ap.add_argument("--without", nargs="+", default=[], metavar="SOURCE",
                    help="source groups not trained on (e.g. honeypot raginject), to weigh each source's effect")
    ap.add_argument("--v5-embed", action="store_true", help="v5's short attacks also hidden in benign text")
    ap.add_argument("--attack-weight", type=json.loads, default=None,
                    help='v6: weight multiplier per attack source, e.g. {"synthetic-embedded": 2}')
    ap.add_argument("--attack-windows", choices=("whole", "best"), default=None,
                    help="v6: long attacks trained whole (v4) or as their best window under a first fit")
    ap.add_argument("--embedding", action="store_true",
                    help="v7: also the static-embedding variants A, B and C (docs/scan-classifier-v7-plan.md)")
    ap.add_argument("--mlp", action="store_true",
                    help="v8: also the small-MLP variants A, B, C and D (docs/scan-classifier-v8-plan.md)")
    ap.add_argument("--mlp-latency", action="store_true",
                    help="v8: stage latency (4 KB and 300 B) with v4 and with MLPs of each variant's shape; no training")
    ap.add_argument("--static", action="store_true",
                    help="v14: also the model2vec static-embedding variants A, B, C and D and each one's latency "
                         "(docs/scan-classifier-v14-plan.md)")
    ap.add_argument("--rule-misses", nargs="?", const="scan-dev-scores.json", default=None, metavar="SCORES",
                    help="v9: print the development attacks that neither the rules nor the model catch, by source, "
                         "and write the model's score of every development text to SCORES (JSON)")
    args = ap.parse_args(argv)
    if args.mlp_latency:
        return _mlp_latency()
    if args.v11_data:
        scan_corpus.V11_TRAIN = True
    if args.v5_data or args.v5_embed:
        scan_corpus.V5_SOURCES = True
    if args.v5_embed:
        scan_corpus.V5_EMBED = True
    if args.window:
        trainer.WINDOW, trainer.STRIDE = args.window
    rows = [r for r in scan_corpus.build(trainer.SEED, DEV_SOURCES) if r["split"] != "heldout"
            and trainer._source_group(r["source"]) not in args.without]
    dev = [r for r in rows if r["split"] == "dev"]
    dev += long_chat_texts(dev)
    shared = [json.loads(line) for line in bench.DEV.read_text("utf-8").splitlines() if line.strip()]
    rules = bench._rules_stage()
    rules_hits = {r["text"]: bool(rules.scan(r["text"])) for r in shared} if rules is not None else {}
    print(f"development split: {sum(r['label'] == 'attack' for r in dev)} attacks, "
          f"{sum(r['label'] == 'benign' for r in dev)} benign, from {', '.join(DEV_SOURCES)}")
    for bits, c, share in ((b, c, s) for b in args.bits for c in args.c_binary for s in args.benign_share):
        t0 = time.perf_counter()
        _rows, _val, _W16, _b, _platt, weights = trainer.train(bits=bits, rows=rows,
                                                               c_binary=c, attack_share=args.attack_share,
                                                               benign_share=share,
                                                               attack_weight=args.attack_weight,
                                                               attack_windows=args.attack_windows,
                                                               embedding="all" if args.embedding else None,
                                                               mlp="all" if args.mlp else None,
                                                               static="all" if args.static else None,
                                                               log=print if args.mlp or args.static
                                                               else lambda *_: None)
        seconds = round(time.perf_counter() - t0, 1)
        if args.rule_misses:
            _rule_misses(weights, dev, rules, Path(args.rule_misses))
        # the data the row was fitted on: v4's, or v11's with --v11-data (v11, v12)
        data = "v11 data" if args.v11_data else "v4"
        for variant, w in (weights.items() if args.embedding or args.mlp or args.static else [(data, weights)]):
            _report(variant, w, dev, shared, rules_hits, bits, c, share, seconds, args)
        if args.static:
            _latency({k: variants.classifier(w) for k, w in weights.items()})
    return 0


def long_chat_texts(dev: list[dict]) -> list[dict]:
    """Long benign texts too: a model scored in windows has more chances to fire on a long document than on a
    chat line. 300 texts of 2 KB or more, each made of consecutive development chat turns."""
    turns = [r["text"] for r in dev if r["source"] == "chitchat"]
    long_texts, current = [], []
    for turn in turns:
        current.append(turn)
        if sum(len(t) + 1 for t in current) >= 2048:
            long_texts.append("\n".join(current))
            current = []
        if len(long_texts) == 300:
            break
    return [{"text": t, "label": "benign", "family": "benign", "source": "chitchat-long", "split": "dev"}
            for t in long_texts]


def _mlp_latency() -> None:
    """The stage's time per text for v4 and for each v8 variant's shape (seeded random weights over the shipped
    v4 file, the output bias so low that nothing passes: the clean case, whose path does not depend on the
    weights' values), alternating, so that the machine's load falls on all of them alike."""
    import numpy as np

    base = clf.InjectionClassifier.load()._w
    models = {"v4": clf.InjectionClassifier(base)}
    for name, (hidden, skip) in trainer.MLP_VARIANTS.items():
        rng = np.random.default_rng(trainer.SEED)
        E = (rng.standard_normal((1 << trainer.MLP_BITS, hidden + skip), dtype=np.float32) * 0.05)
        mlp = variants.Mlp(bits=trainer.MLP_BITS, E=E.astype(np.float16).astype(np.float32),
                           b1=np.zeros(hidden, np.float32), w2=rng.standard_normal(hidden, dtype=np.float32),
                           b2=-1e3, hidden=hidden, skip=skip)
        models[name] = variants.classifier(variants.MlpWeights.over(base, mlp=mlp))
    _latency(models)


def _latency(models: dict) -> None:
    """The stage's time per text (4 KB and 300 B) with each model's own scoring path (v8's shapes, v14's trained
    variants), alternating over two rounds so that the machine's load falls on all of them alike."""
    for rnd in range(2):
        for size in (4096, 300):
            for name, model in models.items():
                print(json.dumps({"round": rnd, "variant": name, **bench.latency(model, size, 2000)}), flush=True)


def _rule_misses(weights, dev, rules, out: Path) -> None:
    """v9 (docs/scan-classifier-v9-plan.md): the development attacks caught by neither the rules stage (every
    shipped pack, any detection, as scan_classifier_bench.py counts) nor the model fitted without them (at the
    model card's threshold), by source; and every development text's model score, written to ``out`` so that
    rules + model can be recomputed after a rule change without fitting again (benchmarks/scan_rules_dev.py)."""
    model = variants.classifier(weights)
    scores = {r["text"]: model.best(r["text"])[0].probability for r in dev}
    out.write_text(json.dumps({"threshold": model.threshold, "scores": scores}, ensure_ascii=False), "utf-8")
    attacks = [r for r in dev if r["label"] == "attack"]
    by_source: dict[str, list[dict]] = {}
    counts: dict[str, dict[str, int]] = {}
    for r in attacks:
        rule_hit = bool(rules.scan(r["text"]))
        model_hit = scores[r["text"]] >= model.threshold
        c = counts.setdefault(r["source"], {"attacks": 0, "rules": 0, "model": 0, "either": 0})
        c["attacks"] += 1
        c["rules"] += rule_hit
        c["model"] += model_hit
        c["either"] += rule_hit or model_hit
        if not (rule_hit or model_hit):
            by_source.setdefault(r["source"], []).append(r)
    print(json.dumps({"rule_misses": counts, "scores_file": str(out)}), flush=True)
    for source, rows in sorted(by_source.items()):
        print(f"\n== {source}: {len(rows)} attacks caught by neither stage")
        for r in rows:
            print(json.dumps({"family": r["family"], "p": round(scores[r["text"]], 4), "text": r["text"]},
                             ensure_ascii=False))


def _report(variant, weights, dev, shared, rules_hits, bits, c, share, seconds, args) -> None:
    """One JSON line of development figures for one trained variant."""
    model = variants.classifier(weights)
    figures = trainer.evaluate(model, dev)
    neg = sorted((model.best(r["text"])[0].probability for r in dev if r["label"] == "benign"), reverse=True)
    pos = [model.best(r["text"])[0].probability for r in dev if r["label"] == "attack"]
    k1 = int(0.01 * len(neg))
    thr1 = neg[k1] if k1 < len(neg) else 0.0
    alone = bench.quality(shared, lambda t, m=model: bool(m.scan(t)))
    both = bench.quality(shared, lambda t, m=model: rules_hits.get(t, False) or bool(m.scan(t)))
    print(json.dumps({
        "variant": variant, "bits": bits, "C": c, "benign_share": share, "seconds": seconds,
        "attack_weight": args.attack_weight, "attack_windows": args.attack_windows or trainer.ATTACK_WINDOWS,
        "blas": trainer.blas_info(),
        "dev_split": {k: figures[k] for k in ("recall", "fpr", "recall_by_family", "fpr_by_source",
                                               "recall_at_fpr_0.02", "threshold_at_fpr_0.02")},
        "dev_split_recall_at_fpr_0.01": round(sum(p > thr1 for p in pos) / len(pos), 4),
        "dev_split_threshold_at_fpr_0.01": round(thr1, 4),
        "scan_dev_set_model": {k: alone[k] for k in ("recall", "fpr", "false_positives")},
        "scan_dev_set_rules_model": {k: both[k] for k in ("recall", "fpr", "false_positives")},
    }), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
