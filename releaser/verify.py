"""Post-swap verification: does the app itself work on the new release?

After the swap (and the after_swap hooks, which typically make the app reopen
the file) the `[[verify.http]]` probes and `[[verify.exec]]` commands run in
rounds for `[verify] window_s`, while the previous release stays ready in the
other slot. The first failing round ends the window; the caller swaps back.
The `[[analysis.prometheus]]` queries (an analysis.AnalysisRun) are evaluated in
the same window when due: a failed analysis ends it like a failed probe; an
inconclusive one ends it only with --strict, else it is a warning.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import analysis
from .config_calls import ExecProbe, HttpProbe, Verify
from .config_calls import verify_enabled as enabled
from .hooks import run_command
from .httpclient import NoAnswer, http_request

log = logging.getLogger("releaser.verify")

BODY_MAX = 1 << 20  # read at most 1 MiB of a probe's answer
_MISSING = object()


@dataclass
class VerifyReport:
    """The outcome of the verify window after a swap."""

    rounds: int = 0
    reasons: list[str] = field(default_factory=list)
    # False when --no-wait ended the window after the first good round
    waited: bool = True
    duration_ms: float = 0.0
    # the analysis run's verdict, and inconclusive evaluations that did not block
    analysis: analysis.Verdict | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.reasons

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "rounds": self.rounds, "reasons": self.reasons,
                "waited": self.waited, "duration_ms": self.duration_ms,
                "analysis": self.analysis.as_dict() if self.analysis else None}


def check_http(probe: HttpProbe) -> str | None:
    """None when the probe passes within its retries, else the last failure."""
    problem: str | None = None
    for attempt in range(probe.retries + 1):
        if attempt:
            time.sleep(probe.retry_delay_s)
        problem = _http_once(probe)
        if problem is None:
            return None
        log.info("verify %s: attempt %d failed: %s", probe.url, attempt + 1, problem)
    return f"http {probe.url}: {problem}"


def _http_once(probe: HttpProbe) -> str | None:
    # timeout_s bounds the whole attempt (status and body), not each socket read:
    # verification runs while the store lock is held. No proxy from the environment.
    try:
        status, body = http_request(probe.url, timeout_s=probe.timeout_s, body_max=BODY_MAX,
                                    headers={"User-Agent": "releaser-verify"})
    except NoAnswer as exc:
        return f"no answer: {exc}"
    if status != probe.expect_status:
        return f"status {status}, expected {probe.expect_status}" + _snippet(body)
    text = body.decode("utf-8", "replace")
    if probe.body_contains is not None and probe.body_contains not in text:
        return f"body does not contain {probe.body_contains!r}" + _snippet(body)
    if probe.json_field is not None:
        try:
            doc = json.loads(text)
        except ValueError:
            return "body is not JSON" + _snippet(body)
        value = _dig(doc, probe.json_field)
        if value is _MISSING or value is None:
            return f"JSON field {probe.json_field} is missing or null" + _snippet(body)
        if probe.json_value is not None and not _same(value, probe.json_value):
            return f"JSON field {probe.json_field} is {value!r}, expected {probe.json_value!r}"
    return None


def _dig(doc: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return _MISSING
    return doc


def _same(got: Any, want: Any) -> bool:
    # TOML `1` and JSON `1.0` are the same number; a bool is never a number here
    if isinstance(got, bool) or isinstance(want, bool):
        return got is want
    if isinstance(got, int | float) and isinstance(want, int | float):
        return float(got) == float(want)
    return bool(got == want)


def _snippet(body: bytes) -> str:
    text = body[:200].decode("utf-8", "replace").strip().replace("\n", " ")
    return f" (body: {text})" if text else ""


def check_exec(probe: ExecProbe, env: dict[str, str]) -> str | None:
    res = run_command(probe.argv, timeout_s=probe.timeout_s, env={**env, "RELEASER_HOOK":
                                                                  "verify"})
    return None if res.ok else f"exec {' '.join(probe.argv)}: {res.problem}"


def run_round(cfg: Verify, env: dict[str, str]) -> list[str]:
    """All probes once; every failure's reason (empty when the app looks healthy)."""
    reasons = [r for p in cfg.http if (r := check_http(p))]
    reasons += [r for p in cfg.exec if (r := check_exec(p, env))]
    return reasons


def run_window(cfg: Verify, env: dict[str, str], *, wait: bool = True,
               sleep: Callable[[float], None] = time.sleep,
               analysis_run: analysis.AnalysisRun | None = None,
               strict: bool = False) -> VerifyReport:
    """Rounds every interval_s until window_s has passed; stops at the first failure.

    At least one round always runs. With wait=False only that first round runs
    (`publish --no-wait`): the release is accepted once the app answered well once.
    analysis_run: its entries are evaluated when due inside the window, and each
    once at its end if the window was shorter than its interval_s.
    """
    t0 = time.monotonic()
    report = VerifyReport(waited=wait)
    probing = enabled(cfg)
    if not probing and analysis_run is None:
        return report
    deadline = t0 + cfg.window_s
    next_round = t0
    while True:
        if probing and time.monotonic() >= next_round:
            report.rounds += 1
            report.reasons = run_round(cfg, env)
            if report.reasons or not wait:
                break
            next_round = min(time.monotonic() + cfg.interval_s, deadline)
        if analysis_run is not None:
            analysis_run.step()
            if _analysis_blocks(analysis_run, report, strict):
                break
        left = deadline - time.monotonic()
        if left <= 0:
            break
        wake = min(next_round if probing else deadline,
                   analysis_run.next_due() if analysis_run else deadline)
        sleep(max(0.0, min(wake - time.monotonic(), left)))
    if analysis_run is not None:
        if not report.reasons and wait:
            analysis_run.finish()  # every entry has its say, however short the window
            _analysis_blocks(analysis_run, report, strict)
        report.analysis = analysis_run.verdict()
        if not strict:
            report.warnings = analysis_run.inconclusive_notes()
    report.duration_ms = round((time.monotonic() - t0) * 1000, 3)
    return report


def _analysis_blocks(run: analysis.AnalysisRun, report: VerifyReport, strict: bool) -> bool:
    verdict = run.verdict()
    if verdict.outcome == analysis.FAIL or (strict and verdict.outcome == analysis.INCONCLUSIVE):
        report.reasons = verdict.reasons + (
            ["inconclusive analysis fails a publish with --strict"]
            if verdict.outcome == analysis.INCONCLUSIVE else [])
        return True
    return False
