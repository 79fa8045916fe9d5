"""v10's held-out sources in benchmarks/scan_corpus.py: de-duplication, caps, label conflicts and missing packages.

No data package is needed: the loaders are replaced by small fakes (CI installs only ``.[test]``).
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import scan_corpus  # noqa: E402


def _row(text: str, label: str = "attack") -> dict:
    return scan_corpus._v10_row(text, label, "prompt_injection", "fake")


def test_text_key_normalises_case_width_and_whitespace():
    assert scan_corpus.text_key("Ignore  the\nPREVIOUS rules ") == scan_corpus.text_key("ignore the previous rules")
    assert scan_corpus.text_key("ｉｇｎｏｒｅ") == scan_corpus.text_key("ignore")  # NFKC folds full-width letters
    assert scan_corpus.text_key("ignore the rules") != scan_corpus.text_key("ignore the rule")


def test_family_rule_from_category_names():
    assert scan_corpus._v10_family("intruder_02_sophisticated_extraction") == "prompt_extraction"
    assert scan_corpus._v10_family("info_leak/system-prompt") == "prompt_extraction"
    assert scan_corpus._v10_family("jailbreak") == "jailbreak"
    assert scan_corpus._v10_family("persona-break") == "jailbreak"
    assert scan_corpus._v10_family("indirect_injection") == "prompt_injection"


def test_dedup_against_existing_rows_and_earlier_sources_conflicts_and_caps(monkeypatch):
    def first(seed):
        return [_row("Already in TRAINING data"), _row("new attack one"), _row("short"),
                _row("labelled both ways", "attack"), _row("labelled  BOTH ways", "benign"),
                _row("a benign question here", "benign")]

    def second(seed):
        return [_row("NEW attack one"), _row("another new attack")] + [_row(f"capped attack {i}") for i in range(5)]

    monkeypatch.setattr(scan_corpus, "_V10_LOADERS", {"agent-guardian": first, "agentred": second})
    monkeypatch.setattr(scan_corpus, "V10_CAP_ATTACK", 3)
    existing = [{"text": "already in training data", "label": "benign", "split": "train", "source": "x"}]
    report: dict = {}
    rows = scan_corpus.v10_heldout(1234, existing, report)
    by_source = {s: [r["text"] for r in rows if r["source"] == s] for s in ("agent-guardian", "agentred")}
    assert by_source["agent-guardian"] == ["new attack one", "a benign question here"]
    assert "NEW attack one" not in by_source["agentred"]  # a duplicate of an earlier source's row
    assert len(by_source["agentred"]) == 3  # the cap keeps the 3 smallest keys, in the source's order
    keys = sorted(scan_corpus.text_key(t) for t in ["another new attack"] + [f"capped attack {i}" for i in range(5)])
    assert sorted(scan_corpus.text_key(t) for t in by_source["agentred"]) == keys[:3]
    assert all(r["split"] == "heldout" for r in rows)
    assert report["agent-guardian"] == {"read": 6, "duplicates_or_conflicts": 4, "capped": 0, "attack": 1, "benign": 1}
    assert report["agentred"]["capped"] == 3


def test_missing_package_is_skipped_with_a_note(monkeypatch, capsys):
    def missing(seed):
        raise importlib.metadata.PackageNotFoundError("agent-redteam")

    monkeypatch.setattr(scan_corpus, "_V10_LOADERS", {"agent-redteam": missing, "agentred": lambda seed: [_row("x" * 20)]})
    report: dict = {}
    rows = scan_corpus.v10_heldout(1234, [], report)
    assert [r["source"] for r in rows] == ["agentred"]
    assert report["agent-redteam"] is None
    err = capsys.readouterr().err
    assert "agent-redteam skipped" in err and "pip install --no-deps agent-redteam==0.5.0" in err


@pytest.mark.parametrize("name", sorted(scan_corpus.V10_HELDOUT))
def test_every_v10_source_has_a_loader_and_a_pinned_permissive_license(name):
    dist, version, license_, _earlier = scan_corpus.V10_HELDOUT[name]
    assert name in scan_corpus._V10_LOADERS
    assert version and license_ in ("MIT", "Apache-2.0")


# -- v11 (docs/scan-classifier-v11-plan.md): the six packages looked at before v10 train, the five stay held out --


def _fake_loaders(missing: str | None = None) -> dict:
    def loader(name):
        def load(seed):
            if name == missing:
                raise importlib.metadata.PackageNotFoundError(name)
            return [_row(f"{name} attack text"), _row(f"{name} benign text", "benign"), _row("shared by two sources")]
        return load

    return {name: loader(name) for name in scan_corpus.V10_HELDOUT}


def test_v11_training_sources_are_the_six_looked_at_before_v10():
    assert set(scan_corpus.V11_TRAIN_SOURCES) == {"raginject", "honeypot", "nullsec", "lightguard", "aicu-scanner",
                                                  "agentred"}
    held = set(scan_corpus.V10_HELDOUT) - set(scan_corpus.V11_TRAIN_SOURCES)
    assert held == {"agent-guardian", "agent-redteam", "agentic-redteam", "aion-redteam", "dual-llm-bench"}


def test_v11_rows_move_the_six_to_training_and_keep_the_five_held_out(monkeypatch):
    monkeypatch.setattr(scan_corpus, "_V10_LOADERS", _fake_loaders())
    existing = [{"text": "an original held-out text", "label": "attack", "split": "heldout", "source": "bastioncorpus"}]
    rows = scan_corpus.v11_rows(1234, existing)
    for r in rows:
        assert r["split"] == ("train" if r["source"] in scan_corpus.V11_TRAIN_SOURCES else "heldout")
    assert {r["source"] for r in rows} == set(scan_corpus.V10_HELDOUT)
    # v10's procedure: a text two sources share stays with the first in alphabetical order (agent-guardian, held out)
    shared = [r for r in rows if r["text"] == "shared by two sources"]
    assert [(r["source"], r["split"]) for r in shared] == [("agent-guardian", "heldout")]
    held = {scan_corpus.text_key(r["text"]) for r in existing + rows if r["split"] == "heldout"}
    assert not any(scan_corpus.text_key(r["text"]) in held for r in rows if r["split"] == "train")


def test_v11_a_training_source_that_repeats_a_held_out_text_loses_it(monkeypatch):
    loaders = _fake_loaders()
    monkeypatch.setattr(scan_corpus, "_V10_LOADERS", {**loaders, "raginject": lambda seed: [
        _row("An ORIGINAL held-out  text"), _row("a raginject text of its own")]})
    existing = [{"text": "an original held-out text", "label": "attack", "split": "heldout", "source": "bastioncorpus"}]
    rows = scan_corpus.v11_rows(1234, existing)
    assert [r["text"] for r in rows if r["source"] == "raginject"] == ["a raginject text of its own"]


@pytest.mark.parametrize("missing", ["raginject", "agent-redteam"])
def test_v11_training_fails_clearly_when_a_package_is_missing(monkeypatch, missing):
    """The six are training data, and the five held-out packages are needed to keep their texts out of training:
    building v11's training rows without one of them is an error naming it, never a quiet skip."""
    monkeypatch.setattr(scan_corpus, "_V10_LOADERS", _fake_loaders(missing))
    dist, version, _license, _earlier = scan_corpus.V10_HELDOUT[missing]
    with pytest.raises(scan_corpus.MissingSourceError, match=f"pip install --no-deps {dist}=={version}"):
        scan_corpus.v11_rows(1234, [])
