"""Rule-pack tools for rule authors.

    python -m gateway_plugins.scan check [PACK ...]        # load the packs, run every rule's examples
    python -m gateway_plugins.scan scan [--rules PACK] TEXT ...   # the detections of each text, as JSON

``check`` loads the built-in packs and the given ones exactly as the plugin does
(so a bad pack fails with the same message naming file, rule and problem), then
checks that each rule matches its ``examples.match`` texts and none of its
``examples.clean`` ones. Exit status 1 when anything fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec

from gateway_plugins.scan.engine import RuleStage, Scanner, build_scanner
from gateway_plugins.scan.packs import PackError, load_rules


def check(packs: list[str]) -> int:
    try:
        rules = load_rules(packs)
    except PackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    scanner = Scanner([RuleStage(rules)])
    wanted = {str(Path(p)) for p in packs}
    failures = 0
    checked = 0
    for rule in rules:
        if wanted and rule.source not in wanted:
            continue
        for text in rule.examples.match:
            checked += 1
            if rule.id not in {d.rule_id for d in scanner.scan(text).detections}:
                failures += 1
                print(f"{rule.source}: rule {rule.id}: does not match its example {text!r}")
        for text in rule.examples.clean:
            checked += 1
            if rule.id in {d.rule_id for d in scanner.scan(text).detections}:
                failures += 1
                print(f"{rule.source}: rule {rule.id}: matches its clean example {text!r}")
    print(f"{len(rules)} rules loaded, {checked} examples checked, {failures} failed")
    return 1 if failures else 0


def scan(packs: list[str], texts: list[str]) -> int:
    try:
        scanner = build_scanner(packs)
    except PackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for text in texts:
        result = scanner.scan(text)
        print(msgspec.json.encode({"text": text[:80], "severity": result.severity, "detections": result.detections}).decode())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway_plugins.scan", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check_parser = commands.add_parser("check", help="load packs and run their rules' examples")
    check_parser.add_argument("packs", nargs="*")
    scan_parser = commands.add_parser("scan", help="print the detections of texts")
    scan_parser.add_argument("--rules", action="append", default=[])
    scan_parser.add_argument("texts", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.packs)
    return scan(args.rules, args.texts)


if __name__ == "__main__":
    sys.exit(main())
