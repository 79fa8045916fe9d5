"""scan: a prompt firewall on the wire.

```yaml
plugins:
  - use: scan
    config:
      action: block            # block | flag | log
      min_severity: MEDIUM     # LOW | MEDIUM | HIGH | CRITICAL
      redact: [secret, pii]    # replaced by [REDACTED:<family>] in what the upstream sees
      scan_responses: false    # also scan answers, streamed ones incrementally
      rules: my-rules.yaml     # an extra rule pack (relative to the config file)
      disable: [pii.phone]     # rule ids to turn off
```

Every text of a request (chat messages and content parts, tool call arguments and
tool results, completions prompts, embeddings input, Responses input, Anthropic
system, messages and tool blocks; see :mod:`.extract`) goes through the detector
(:mod:`.engine`): YAML rule packs (``rules/<family>.yaml``) matched in one RE2 pass,
on the text and on normalised views (homoglyphs, invisible characters, leetspeak,
ROT13, base64 and hex decoded).

Findings at or above ``min_severity`` follow ``action``: ``block`` answers 400
``threat_detected`` naming families and rule ids (never the matched text) and the
upstream never sees the request; ``flag`` adds ``x-gateway-threat: SEVERITY``;
``log`` writes a log line. Findings of the ``redact`` families are replaced in the
body instead, whatever their severity, and the request goes on.
``exchange.threat_severity`` holds the highest acted-on severity (ratelimit reads
it) and ``exchange.state[SCAN_REPORT]`` the whole :class:`ScanReport`.

Stages compose: the detector is a :class:`~.engine.Scanner` running
:class:`~.engine.Stage` objects in order (``scan(text) -> list[Detection]``); the
rules engine is the first. A second stage (a learned classifier) plugs in through
:func:`~.engine.build_scanner`'s ``stages`` argument, under an option of its own
(``classifier:`` is reserved for it). See docs/scan.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any, Literal

import msgspec
from aiohttp import web
from opentelemetry import trace

from gateway import Exchange, PluginConfigError, Response, StashKey, StreamEvent, hookimpl
from gateway.errors import threat_detected
from gateway_plugins.scan.cache import ResultCache
from gateway_plugins.scan.engine import SEVERITY_RANK, Detection, Scanner, ScanResult, Stage, build_scanner, highest
from gateway_plugins.scan.extract import Slot, slots, stream_slots
from gateway_plugins.scan.packs import PackError

__all__ = ["SCAN_REPORT", "Detection", "Scan", "ScanReport", "Scanner", "Stage"]

log = logging.getLogger("gateway.scan")

#: characters of a stream kept from one event to the next, so a finding split over
#: two events (a key, a phrase) is still seen whole
STREAM_TAIL = 256
#: texts longer than this are not cached (their hash and the memory outweigh a hit)
CACHE_MAX_TEXT = 64 * 1024
#: most texts in one ``POST /scan`` batch
MAX_BATCH = 1000
#: with the learned stage on, bodies with more text than this (or ``offload_bytes`` when lower) go to a worker
#: thread: the stage costs about 0.1 ms of CPU per KB, so 16 KB keeps the event loop's pause near 2 ms
CLASSIFIER_OFFLOAD_BYTES = 16 * 1024


class ClassifierConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The learned second stage (docs/scan-classifier.md): ``classifier: {enabled: true, threshold: 0.5}``."""

    #: off by default until it meets its targets: held-out recall 0.895 at 0.8 % false positives, one
    #: attack short of 0.9 (throughput 0.88-0.94x of rules only, target 0.9x; docs/scan-classifier.md)
    enabled: bool = False
    #: calibrated attack probability a text must reach; None: the model card's
    threshold: float | None = None
    #: families it may raise (prompt_injection, jailbreak, prompt_extraction); None: all
    families: list[str] | None = None
    #: another weights file (its .json model card beside it); None: the shipped model
    model: str | None = None


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """```yaml
    - use: scan
      config: {action: block, min_severity: MEDIUM, redact: [secret, pii]}
    ```"""

    action: Literal["block", "flag", "log"] = "block"
    min_severity: Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"] = "MEDIUM"
    scan_responses: bool = False
    rules: str | None = None
    redact: list[str] = []
    disable: list[str] = []
    #: results kept for texts seen again (system prompts, retries, POST /scan); 0: no cache
    cache_size: int = 10000
    cache_ttl_s: float = 600.0
    #: and at most this many characters of cached texts in all (bounds the memory)
    cache_max_chars: int = 16_000_000
    #: bodies with more text than this are scanned on a worker thread, off the event loop (with the
    #: classifier on: at most CLASSIFIER_OFFLOAD_BYTES)
    offload_bytes: int = 64 * 1024
    classifier: ClassifierConfig = ClassifierConfig()


class Finding(msgspec.Struct, frozen=True, gc=False):
    """A detection in one text of the exchange: ``text`` is the slot's index."""

    text: int
    detection: Detection
    redacted: bool = False


class ScanReport(msgspec.Struct, kw_only=True, gc=False):
    """What scan found in one exchange, under ``exchange.state[SCAN_REPORT]``.

    ``severity`` is the highest severity acted on (None: nothing reached
    ``min_severity``); ``findings`` every detection, redacted ones marked;
    ``action`` what was done: "block", "flag", "log", "redact" or None.
    """

    severity: str | None = None
    findings: list[Finding] = []
    action: str | None = None
    texts: int = 0
    duration_ms: float = 0.0
    response_findings: list[Detection] = []

    @property
    def families(self) -> list[str]:
        return sorted({f.detection.family for f in self.findings} | {d.family for d in self.response_findings})

    @property
    def rule_ids(self) -> list[str]:
        return sorted({f.detection.rule_id for f in self.findings} | {d.rule_id for d in self.response_findings})


#: the scan report of an exchange (other plugins read ``exchange.threat_severity``)
SCAN_REPORT: StashKey[ScanReport] = StashKey("scan.report")
_STREAM: StashKey[dict[tuple[Any, ...], str]] = StashKey("scan.stream")


class Scan:
    Config = Config

    def __init__(self, config: Config, stages: Iterable[Stage] = ()) -> None:
        self.config = config
        self.min_rank = SEVERITY_RANK[config.min_severity]
        self.redact = frozenset(config.redact)
        self.classifier = _classifier(config.classifier)
        self.extra_stages = tuple(stages) + ((self.classifier,) if self.classifier is not None else ())
        self.offload_bytes = config.offload_bytes if self.classifier is None else min(
            config.offload_bytes, CLASSIFIER_OFFLOAD_BYTES)
        self.cache: ResultCache[ScanResult] = ResultCache(config.cache_size, config.cache_ttl_s, config.cache_max_chars)
        if config.cache_size < 0:
            raise PluginConfigError("cache_size", "must be 0 (no cache) or more")
        if config.cache_ttl_s <= 0:
            raise PluginConfigError("cache_ttl_s", "must be more than 0")
        self.scanner: Scanner | None = None
        if config.rules is None or os.path.isabs(config.rules):
            self._build(config.rules)
        # figures
        self.requests_scanned = 0
        self.responses_scanned = 0
        self.texts_scanned = 0
        self.blocked = 0
        self.flagged = 0
        self.logged = 0
        self.redacted = 0
        self.offloaded = 0
        self.detections_by_family: Counter[str] = Counter()
        self.detections_by_severity: Counter[str] = Counter()

    def _build(self, rules_path: str | None) -> None:
        try:
            scanner = build_scanner([rules_path] if rules_path else [], self.config.disable, self.extra_stages)
        except PackError as exc:
            key = "disable" if exc.path == "disable" else "rules"
            if key == "disable":
                raise PluginConfigError("disable", f"{exc.rule}: {exc.problem}") from None
            raise PluginConfigError(key, str(exc)) from None
        families = {rule.family for stage in scanner.stages for rule in getattr(stage, "rules", ())}
        unknown = sorted(self.redact - families)
        if unknown:
            raise PluginConfigError("redact", f"no rule has the family {unknown[0]!r} (families: {', '.join(sorted(families))})")
        self.scanner = scanner

    @hookimpl
    def configure(self, gateway: Any) -> None:
        if self.scanner is None:
            assert self.config.rules is not None
            base = os.path.dirname(os.path.abspath(gateway.config_path))
            self._build(os.path.join(base, self.config.rules))

    # -- scanning -----------------------------------------------------------------------

    def scan_texts(self, texts: list[str]) -> list[ScanResult]:
        """Each text, through the result cache (one at a time: a text repeated in the
        batch is a hit the second time)."""
        assert self.scanner is not None
        scan = self.scanner.scan
        cache = self.cache
        results = []
        for text in texts:
            if len(text) > CACHE_MAX_TEXT:
                result = scan(text)
            else:
                result = cache.get(text)
                if result is None:
                    result = scan(text)
                    cache.put(text, result)
            results.append(result)
        return results

    async def _scan_all(self, texts: list[str]) -> list[ScanResult]:
        """Off the event loop when the texts are big (CPU-heavy on a large body)."""
        if sum(map(len, texts)) > self.offload_bytes:
            self.offloaded += 1
            return await asyncio.to_thread(self.scan_texts, texts)
        return self.scan_texts(texts)

    # -- hooks ----------------------------------------------------------------------------

    @hookimpl
    async def request(self, exchange: Exchange) -> None:
        if not exchange.has_json_body:
            return
        document = exchange.json()
        found = slots(document)
        self.requests_scanned += 1
        if not found:
            return
        started = time.perf_counter()
        texts = [slot.text for slot in found]
        # A small body is scanned here and now, without a coroutine of its own.
        results = self.scan_texts(texts) if sum(map(len, texts)) <= self.offload_bytes else await self._scan_all(texts)
        self.texts_scanned += len(found)
        for result in results:
            if result.detections:
                break
        else:
            return
        report = ScanReport(texts=len(found))
        acted: list[Detection] = []
        redactions: list[tuple[Slot, list[Detection]]] = []
        for index, (slot, result) in enumerate(zip(found, results, strict=True)):
            to_redact = []
            for detection in result.detections:
                redact = detection.family in self.redact
                report.findings.append(Finding(index, detection, redact))
                self.detections_by_family[detection.family] += 1
                self.detections_by_severity[detection.severity] += 1
                if redact:
                    to_redact.append(detection)
                elif SEVERITY_RANK[detection.severity] >= self.min_rank:
                    acted.append(detection)
            if to_redact:
                redactions.append((slot, to_redact))
        if redactions:
            for slot, detections in redactions:
                slot.set(redact_text(slot.text, detections))
            exchange.set_json(document)
            self.redacted += sum(len(d) for _, d in redactions)
            report.action = "redact"
        report.duration_ms = (time.perf_counter() - started) * 1000
        exchange.state[SCAN_REPORT] = report
        if acted:
            severity = highest(acted)
            report.severity = exchange.threat_severity = severity
            self._act(exchange, report, acted, "request")
        elif exchange.recording:
            self._annotate(report)

    def _act(self, exchange: Exchange, report: ScanReport, acted: list[Detection], where: str) -> None:
        """Block, flag or log what reached ``min_severity``."""
        action = self.config.action
        report.action = action
        if exchange.recording:
            self._annotate(report)
        families = sorted({d.family for d in acted})
        rule_ids = sorted({d.rule_id for d in acted})
        if action == "block":
            self.blocked += 1
            log.info(
                "blocked %s: %s (%s)", where, ", ".join(families), ", ".join(rule_ids),
                extra={"families": families, "rule_ids": rule_ids, "severity": report.severity},
            )  # fmt: skip
            raise threat_detected(
                f"The {where} was blocked by the prompt scanner: {report.severity} "
                f"{', '.join(families)} ({', '.join(rule_ids)})."
            )
        if action == "flag":
            self.flagged += 1
            assert report.severity is not None
            exchange.response_headers["x-gateway-threat"] = report.severity
        else:
            self.logged += 1
        log.warning(
            "threat in %s (%s): %s %s (%s)", where, action, report.severity, ", ".join(families), ", ".join(rule_ids),
            extra={"families": families, "rule_ids": rule_ids, "severity": report.severity},
        )  # fmt: skip

    def _annotate(self, report: ScanReport) -> None:
        span = trace.get_current_span()
        span.set_attribute("gateway.scan.families", report.families)
        span.set_attribute("gateway.scan.rule_ids", report.rule_ids)
        span.set_attribute("gateway.scan.texts", report.texts)
        span.set_attribute("gateway.scan.duration_ms", round(report.duration_ms, 3))
        if self.classifier is not None:
            span.set_attribute("gateway.scan.classifier.model", self.classifier.rule_id)
            scores = [f.detection.score for f in report.findings if f.detection.stage == "classifier"]
            if scores:
                span.set_attribute("gateway.scan.classifier.score", max(s for s in scores if s is not None))
        span.set_attribute("gateway.scan.redacted", sum(1 for f in report.findings if f.redacted))
        if report.severity is not None:
            span.set_attribute("gateway.scan.severity", report.severity)
        if report.action is not None:
            span.set_attribute("gateway.scan.action", report.action)

    @hookimpl
    async def response(self, exchange: Exchange, response: Response) -> Response | None:
        if not self.config.scan_responses or response.is_stream or response.status >= 400:
            return None
        document = response.json()
        if document is None:
            return None
        found = slots(document)
        if not found:
            return None
        self.responses_scanned += 1
        started = time.perf_counter()
        results = await self._scan_all([slot.text for slot in found])
        report = exchange.state.get(SCAN_REPORT) or ScanReport()
        acted: list[Detection] = []
        changed = False
        for slot, result in zip(found, results, strict=True):
            to_redact = []
            for detection in result.detections:
                report.response_findings.append(detection)
                self.detections_by_family[detection.family] += 1
                self.detections_by_severity[detection.severity] += 1
                if detection.family in self.redact:
                    to_redact.append(detection)
                elif SEVERITY_RANK[detection.severity] >= self.min_rank:
                    acted.append(detection)
            if to_redact:
                slot.set(redact_text(slot.text, to_redact))
                self.redacted += len(to_redact)
                changed = True
        report.duration_ms += (time.perf_counter() - started) * 1000
        if not report.response_findings:
            return None
        exchange.state[SCAN_REPORT] = report
        if acted:
            severity = highest(acted)
            if report.severity is None or SEVERITY_RANK[severity] > SEVERITY_RANK[report.severity]:  # type: ignore[index]
                report.severity = exchange.threat_severity = severity
            self._act(exchange, report, acted, "response")
            if self.config.action == "flag":
                response.headers["x-gateway-threat"] = exchange.threat_severity or severity  # type: ignore[assignment]
        elif exchange.recording:
            self._annotate(report)
        if changed:
            return Response.json_response(document, response.status, _without_length(response.headers))
        return None

    @hookimpl
    async def chunk(self, exchange: Exchange, event: StreamEvent) -> None:
        if not self.config.scan_responses:
            return
        deltas = stream_slots(event.json())
        if not deltas:
            return
        assert self.scanner is not None
        tails = exchange.state.get(_STREAM)
        if tails is None:
            tails = exchange.state[_STREAM] = {}
            self.responses_scanned += 1
        acted: list[Detection] = []
        changed = False
        for key, slot in deltas:
            tail = tails.get(key, "")
            text = tail + slot.text
            result = self.scanner.scan(text)
            tails[key] = text[-STREAM_TAIL:]
            if not result.detections:
                continue
            offset = len(tail)
            to_redact = []
            for detection in result.detections:
                if detection.end <= offset:
                    continue  # seen with the previous event
                self.detections_by_family[detection.family] += 1
                self.detections_by_severity[detection.severity] += 1
                report = exchange.state.get(SCAN_REPORT)
                if report is None:
                    report = exchange.state[SCAN_REPORT] = ScanReport()
                report.response_findings.append(detection)
                if detection.family in self.redact:
                    to_redact.append(detection)
                elif SEVERITY_RANK[detection.severity] >= self.min_rank:
                    acted.append(detection)
            if to_redact:
                # What an earlier event carried has left already: redact this event's part.
                local = [
                    Detection(d.rule_id, d.family, d.severity, max(d.start - offset, 0), d.end - offset)
                    for d in to_redact
                ]
                slot.set(redact_text(slot.text, local))
                tails[key] = (tail + slot.text)[-STREAM_TAIL:]
                self.redacted += len(local)
                changed = True
        if changed:
            event.replace(event.json())
        if acted:
            report = exchange.state[SCAN_REPORT]
            severity = highest(acted)
            if report.severity is None or SEVERITY_RANK[severity] > SEVERITY_RANK[report.severity]:  # type: ignore[index]
                report.severity = exchange.threat_severity = severity
            if self.config.action == "block":
                event.drop = True
            self._act(exchange, report, acted, "response")

    @hookimpl
    def admin_routes(self, gateway: Any) -> list[web.RouteDef]:
        return [web.post("/scan", self._scan_endpoint)]

    async def _scan_endpoint(self, request: web.Request) -> web.Response:
        """``POST /scan``: ``{"text"}`` answers one result, ``{"texts": [...]}`` a list."""
        started = time.perf_counter()
        try:
            body = msgspec.json.decode(await request.read())
        except (msgspec.DecodeError, RecursionError):
            return _bad("the body must be JSON: {\"text\": ...} or {\"texts\": [...]}")
        if not isinstance(body, dict):
            return _bad("the body must be a JSON object")
        min_severity = body.get("min_severity", self.config.min_severity)
        if min_severity not in SEVERITY_RANK:
            return _bad(f"min_severity must be one of {', '.join(SEVERITY_RANK)}")
        min_rank = SEVERITY_RANK[min_severity]
        if "texts" in body:
            texts = body["texts"]
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                return _bad("texts must be a list of strings")
            if len(texts) > MAX_BATCH:
                return _bad(f"at most {MAX_BATCH} texts in one call")
            results = await self._scan_all(texts)
            return web.json_response(
                {
                    "results": [_result_json(r, min_rank) for r in results],
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                },
                dumps=_dumps,
            )
        text = body.get("text")
        if not isinstance(text, str):
            return _bad("give a string as text, or a list of strings as texts")
        (result,) = await self._scan_all([text])
        answer = _result_json(result, min_rank)
        answer["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return web.json_response(answer, dumps=_dumps)

    @hookimpl
    def stats(self) -> dict[str, Any]:
        return {
            "requests_scanned": self.requests_scanned,
            "responses_scanned": self.responses_scanned,
            "texts_scanned": self.texts_scanned,
            "blocked": self.blocked,
            "flagged": self.flagged,
            "logged": self.logged,
            "redacted": self.redacted,
            "offloaded": self.offloaded,
            "detections_by_family": dict(self.detections_by_family),
            "detections_by_severity": dict(self.detections_by_severity),
            **self.cache.figures(),
            **self._classifier_figures(),
        }

    def _classifier_figures(self) -> dict[str, Any]:
        if self.classifier is None:
            return {}
        figures = self.classifier.stats()
        return {
            "classifier_texts": figures["texts"],
            "classifier_detections": figures["detections"],
            "classifier_time_ms_total": figures["time_ms_total"],
            "classifier_detections_by_family": figures["detections_by_family"],
        }


def _classifier(options: ClassifierConfig) -> Any:
    """The learned stage built from its options, or None when disabled; a bad option or model file is a
    PluginConfigError naming the key (and the file)."""
    if not options.enabled:
        return None
    from gateway_plugins.scan.classifier import ClassifierError, InjectionClassifier

    try:
        return InjectionClassifier.load(options.model, threshold=options.threshold, families=options.families)
    except ClassifierError as exc:
        raise PluginConfigError("classifier.model", str(exc)) from None
    except ValueError as exc:
        key = "classifier.threshold" if "threshold" in str(exc) else "classifier.families"
        raise PluginConfigError(key, str(exc)) from None


def redact_text(text: str, detections: list[Detection]) -> str:
    """``text`` with each detection's span replaced by ``[REDACTED:<family>]``
    (overlapping spans merged; the first family names the merged span)."""
    spans = sorted((d.start, d.end, d.family) for d in detections if d.end > d.start)
    merged: list[list[Any]] = []
    for start, end, family in spans:
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end, family])
    parts = []
    last = 0
    for start, end, family in merged:
        parts.append(text[last:start])
        parts.append(f"[REDACTED:{family}]")
        last = end
    parts.append(text[last:])
    return "".join(parts)


def _result_json(result: ScanResult, min_rank: int) -> dict[str, Any]:
    detections = result.at_least(min_rank)
    return {
        "has_threats": bool(detections),
        "severity": highest(detections),
        "detections": [
            {
                "rule_id": d.rule_id,
                "family": d.family,
                "severity": d.severity,
                "start": d.start,
                "end": d.end,
                **({"via": d.via} if d.via else {}),
                **({"score": d.score} if d.score is not None else {}),
            }
            for d in detections
        ],
        "duration_ms": round(result.duration_ms, 3),
    }


def _dumps(document: Any) -> str:
    return msgspec.json.encode(document).decode()


def _bad(message: str) -> web.Response:
    error = {"message": message, "type": "invalid_request_error", "code": "invalid_request", "param": None}
    return web.json_response({"error": error}, status=400)  # the shape of every admin error


def _without_length(headers: Any) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in ("content-length", "content-type")}
