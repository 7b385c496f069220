"""`hwtests compare`: the regression gate between two kernel builds in the results store.

    hwtests compare --baseline net-next --candidate patched [--db URL] [--test GLOB] [--metric NAME]
                    [--threshold cycles:fail_abs=0.5] [--inventory F] [--json]

One row per test and metric (and pair, when there are several): n, median and IQR per
side, change of the medians, Hodges-Lehmann shift, one-sided p, verdict. Differences in the
environment of the two sides' runs (debug options, governor, boost, SMT, mitigations, CPU
model, kernel cmdline, NIC driver/firmware, host) are listed, never compared silently.

Exit codes: 0 nothing regressed, 1 a regression, 3 only inconclusive results stand (take more
runs), 2 bad input (e.g. an unknown label).

`compare_labels`, `format_table`, `exit_code` and `junit_properties` are reused by the pytest
plugin (`--gate-baseline`), `hwtests ab` and the HTML report.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Iterable

from . import countercmp, gate, identity
from .errors import InputError
from .gate import Comparison, Threshold

# Host facts compared between the sides (the build's own identity -- kernel release, /proc/version,
# config hash, boot id -- differs by design and is not listed).
HOST_FIELDS = ("name", "cmdline", "nic_driver", "nic_firmware")
ENV_SKIP = {"kernel_release", "boot_id", "config_hash", "cmdline", "governors", "proc_version"}
# Kernel cmdline words that name the image itself and so always differ between builds.
CMDLINE_SKIP = ("BOOT_IMAGE=", "initrd=")


def exit_code(comparisons: Iterable[Comparison]) -> int:
    return gate.exit_code(comparisons)


# -- environment differences -------------------------------------------------------------

def _flatten(d: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(d, dict):
        out: dict[str, str] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(d, (list, tuple, set)):
        return {prefix: ",".join(sorted(str(x) for x in d))}
    return {prefix: "" if d is None else str(d)}


def _cmdline(s: str | None) -> str:
    return " ".join(w for w in (s or "").split() if not w.startswith(CMDLINE_SKIP))


def host_facts(run) -> dict[str, str]:
    """{'rx.cmdline': ..., 'rx.governor': ..., ...} of one run (values as strings)."""
    facts: dict[str, str] = {}
    for h in run.hosts:
        role = h.role or h.name or "host"
        for f in HOST_FIELDS:
            v = getattr(h, f, None)
            facts[f"{role}.{'host' if f == 'name' else f}"] = _cmdline(v) if f == "cmdline" else ("" if v is None else str(v))
        for k, v in _flatten({k: v for k, v in (h.env or {}).items() if k not in ENV_SKIP}).items():
            facts[f"{role}.{k}"] = v
    return facts


def _short(v: str, n: int = 60) -> str:
    v = v if v != "" else "-"
    return v if len(v) <= n else v[: n - 3] + "..."


def env_diff(base_runs: list, cand_runs: list) -> list[str]:
    """One line per host fact that differs between the two sides' runs (or within one side)."""
    def values(runs) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for r in runs:
            for k, v in host_facts(r).items():
                out.setdefault(k, set()).add(v)
        return out

    b, c = values(base_runs), values(cand_runs)
    lines = []
    for k in sorted(set(b) | set(c)):
        vb, vc = b.get(k, {""}), c.get(k, {""})
        if vb == vc and len(vb) == 1:
            continue
        sb = " | ".join(_short(x) for x in sorted(vb))
        sc = " | ".join(_short(x) for x in sorted(vc))
        if vb == vc:
            lines.append(f"{k}: varies within both sides: {sb}")
        else:
            lines.append(f"{k}: baseline {sb}; candidate {sc}")
    return lines


# -- comparing labels ----------------------------------------------------------------------

def check_labels(store, *labels: str) -> None:
    known = list(store.labels())
    for lb in labels:
        if lb not in known:
            raise InputError(f"unknown label '{lb}'; known labels: {', '.join(known) if known else 'none (the store is empty)'}")


def compare_labels(store, baseline: str, candidate: str, *, test_glob: str | None = None,
                   metric: str | None = None, pair: str | None = None, thresholds: dict | None = None,
                   cli_thresholds: Iterable[str] = (), plan: gate.Plan | None = None,
                   look: int = 1) -> list[Comparison]:
    """The gate per test, metric and pair between two build labels (raises InputError on unknown labels).

    `plan` and `look`: this comparison is look `look` of a sequential plan (`hwtests ab`).
    """
    check_labels(store, baseline, candidate)
    th = gate.build_thresholds(thresholds, cli_thresholds)
    df = store.samples(labels=[baseline, candidate], test_glob=test_glob, metric=metric, pair=pair)
    runs = {r.id: r for r in store.runs(labels=[baseline, candidate])}
    if df.empty:
        return []
    df = df.assign(pair=df["pair"].fillna(""))
    sides = {lb: df[df["label"] == lb] for lb in (baseline, candidate)}
    pairs = {lb: sorted(set(sides[lb]["pair"])) for lb in sides}
    # Pairs matched by name; a single pair on each side with different names is compared (and said so).
    matches: list[tuple[str, str]]
    if len(pairs[baseline]) == 1 and len(pairs[candidate]) == 1 and pairs[baseline] != pairs[candidate]:
        matches = [(pairs[baseline][0], pairs[candidate][0])]
    else:
        matches = [(p, p) for p in sorted(set(pairs[baseline]) | set(pairs[candidate]))]
    out: list[Comparison] = []
    for pb, pc in matches:
        bdf = sides[baseline][sides[baseline]["pair"] == pb]
        cdf = sides[candidate][sides[candidate]["pair"] == pc]
        diff = env_diff([runs[i] for i in sorted(set(bdf["run_id"])) if i in runs],
                        [runs[i] for i in sorted(set(cdf["run_id"])) if i in runs])
        if pb != pc:
            diff = [f"pair: baseline {pb or '-'}; candidate {pc or '-'}"] + diff
        keys = sorted(set(zip(bdf["test"], bdf["metric"])) | set(zip(cdf["test"], cdf["metric"])))
        bg = {k: g for k, g in bdf.groupby(["test", "metric"], sort=False)}
        cg = {k: g for k, g in cdf.groupby(["test", "metric"], sort=False)}
        for test, m in keys:
            gb, gc = bg.get((test, m)), cg.get((test, m))
            first = gb if gb is not None else gc
            better = str(first["better"].iloc[0])
            unit = str(first["unit"].iloc[0])
            vb = gb["value"].to_numpy(dtype=float) if gb is not None else []
            vc = gc["value"].to_numpy(dtype=float) if gc is not None else []
            cmp = gate.compare_samples(vb, vc, better, gate.threshold_for(m, th), test=test, metric=m, unit=unit,
                                       env_diff=diff, pair=pc or pb or None, plan=plan, look=look)
            if gb is not None and gc is not None and (gb["better"].nunique() > 1 or gc["better"].nunique() > 1
                                                     or str(gc["better"].iloc[0]) != better):
                cmp.note = (cmp.note + "; " if cmp.note else "") + "samples disagree on the direction (better)"
            out.append(cmp)
    return out


# -- output -------------------------------------------------------------------------------

def _num(v: float | None, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    a = abs(v)
    prec = 1 if a >= 100 else 2 if a >= 10 else 3
    return f"{v:+.{prec}f}" if signed else f"{v:.{prec}f}"


def _p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "-"
    return f"{p:.4f}" if p >= 0.0001 else f"{p:.1e}"


MARK = {"regression": "REGRESSION", "improvement": "improvement", "pass": "pass", "inconclusive": "inconclusive"}


def summary(comparisons: list[Comparison]) -> str:
    counts = {v: sum(1 for c in comparisons if c.verdict == v) for v in gate.VERDICTS}
    return ", ".join(f"{counts[v]} {v}" for v in ("regression", "improvement", "pass", "inconclusive"))


def format_table(comparisons: list[Comparison], baseline: str, candidate: str,
                 thresholds: dict[str, Threshold] | None = None) -> str:
    """An asv/LKP-style table, notes, environment differences and the gate's parameters."""
    lines = [f"baseline: {baseline}    candidate: {candidate}", ""]
    if not comparisons:
        lines.append("no samples of these builds match the selection")
        return "\n".join(lines)
    show_pair = any(c.pair for c in comparisons) and len({c.pair for c in comparisons}) > 1
    head = (["pair"] if show_pair else []) + ["test", "metric", "n", "base median", "IQR", "cand median", "IQR",
                                              "change", "shift", "p", "verdict"]
    rows = []
    for c in comparisons:
        unit = f" {c.unit}" if c.unit and c.unit != c.metric else ""
        rows.append(([c.pair or "-"] if show_pair else []) + [
            c.test, c.metric + unit, f"{c.n_base}/{c.n_cand}", _num(c.median_base), _num(c.iqr_base),
            _num(c.median_cand), _num(c.iqr_cand),
            "-" if not math.isfinite(c.change_pct) else f"{c.change_pct:+.2f}%", _num(c.shift, signed=True),
            _p(c.p_value), MARK[c.verdict]])
    width = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    right = {"n", "base median", "IQR", "cand median", "change", "shift", "p"}

    def fmt(r):
        return "  ".join(str(v).rjust(w) if h in right else str(v).ljust(w) for v, w, h in zip(r, width, head)).rstrip()

    lines.append(fmt(head))
    lines.append("  ".join("-" * w for w in width))
    lines += [fmt(r) for r in rows]
    lines.append("")
    notes = []
    for c in comparisons:
        where = f"{c.test} {c.metric}" + (f" on {c.pair}" if show_pair and c.pair else "")
        said = gate.advice(c)
        if said:
            notes.append(f"{where}: {said}")
        if c.note and c.note not in said:
            notes.append(f"{where}: {c.note}")
    if notes:
        lines.append("notes:")
        lines += [f"  {n}" for n in notes]
        lines.append("")
    diffs: dict[str | None, list[str]] = {}
    for c in comparisons:
        if c.env_diff:
            diffs.setdefault(c.pair, c.env_diff)
    if diffs:
        lines.append("environment differs between the builds' runs (results may not be comparable):")
        for p, d in diffs.items():
            for line in d:
                lines.append(f"  {(p + ': ') if show_pair and p else ''}{line}")
        lines.append("")
    else:
        lines.append("environment: no differences between the builds' runs (CPU, governor, boost, SMT, "
                     "debug options, mitigations, cmdline, NIC)")
        lines.append("")
    used = {c.metric: c.threshold for c in comparisons if c.threshold is not None}
    lines.append("gate: one-sided Mann-Whitney U on raw samples; shift = Hodges-Lehmann estimate "
                 "(candidate - baseline); change = of the medians")
    for m in sorted(used):
        lines.append(f"  {m}: {used[m].describe()}")
    looks = sorted({(c.look, c.metric, c.fail_level) for c in comparisons if c.look and c.fail_level is not None})
    for look, m, level in looks:
        lines.append(f"  sequential look {look}: {m} regresses at p<{level:.2g} (its share of fail_p; "
                     "Pocock-type alpha spending over the planned looks)")
    lines.append("")
    code = exit_code(comparisons)
    lines.append(f"{summary(comparisons)} -> exit {code}")
    return "\n".join(lines)


def to_json(comparisons: list[Comparison], baseline: str, candidate: str,
            thresholds: dict[str, Threshold] | None = None) -> dict:
    return {"baseline": baseline, "candidate": candidate,
            "gate": gate.describe(thresholds),
            "comparisons": [c.to_dict() for c in comparisons],
            "summary": {v: sum(1 for c in comparisons if c.verdict == v) for v in gate.VERDICTS},
            "exit_code": exit_code(comparisons)}


def junit_properties(comparisons: Iterable[Comparison]) -> list[tuple[str, str]]:
    """('gate:pagepool/no-softirq-page_pool01:cycles', 'regression +1.02 cycles p=0.0003'), ..."""
    comps = list(comparisons)
    several = len({c.pair for c in comps}) > 1
    out = []
    for c in comps:
        key = f"gate:{c.test}:{c.metric}" + (f"@{c.pair}" if several and c.pair else "")
        abs_thr = c.threshold is None or c.threshold.fail_abs is not None
        if abs_thr:
            mag = f"{_num(c.shift, signed=True)} {c.unit or c.metric}"
        else:
            mag = "-" if not math.isfinite(c.change_pct) else f"{c.change_pct:+.2f}%"
        val = f"{c.verdict} {mag} p={_p(c.p_value)}"
        if c.verdict == "inconclusive":
            val += f" more_runs={c.more_runs}" if c.more_runs else " more_runs=none (the cap cannot decide it)"
        out.append((key, val))
    return out


# -- command ------------------------------------------------------------------------------

def add_command(sub) -> None:
    p = sub.add_parser(
        "compare", help="regression gate: compare two kernel builds' results",
        description="Compare the samples of two kernel builds (labels) in the results store with the "
                    "regression gate: one-sided Mann-Whitney U plus a minimum change per metric.",
        epilog="exit codes: 0 nothing regressed; 1 a regression; 2 bad input (e.g. unknown label); "
               "3 inconclusive only (take more runs).")
    p.add_argument("--baseline", required=True, metavar="LABEL", help="the reference build")
    p.add_argument("--candidate", required=True, metavar="LABEL", help="the build under test")
    p.add_argument("--db", metavar="URL", help="results store: SQLite path (default .hwtests/results.db) or postgresql://...")
    p.add_argument("--test", metavar="GLOB", help="only tests matching this glob (e.g. 'pagepool/*')")
    p.add_argument("--metric", metavar="NAME", help="only this metric (cycles, ns, gbps, ...)")
    p.add_argument("--pair", metavar="NAME", help="only this host pair")
    p.add_argument("--threshold", action="append", default=[], metavar="METRIC:FIELD=VALUE",
                   help="override a gate threshold, e.g. cycles:fail_abs=0.5 or gbps:fail_rel=0.02 "
                        "(fields: fail_p, pass_p, fail_abs, fail_rel, pass_abs, pass_rel; repeatable)")
    p.add_argument("--inventory", metavar="FILE", help="take thresholds from this inventory's thresholds: section")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    from .store import Store

    config = {}
    if args.inventory:
        from .inventory import load
        config = load(args.inventory).thresholds or {}
    thresholds = gate.build_thresholds(config, args.threshold)     # bad specs fail before opening the store
    store = Store.open(args.db, create=False)
    try:
        comps = compare_labels(store, args.baseline, args.candidate, test_glob=args.test, metric=args.metric,
                               pair=args.pair, thresholds=thresholds)
        warnings = identity.conflicts(store.runs(labels=[args.baseline, args.candidate]))
        counters = countercmp.for_labels(store, args.baseline, args.candidate, args.test, args.pair)
    finally:
        store.close()
    for w in warnings:
        print(f"hwtests: WARNING: {w}", file=sys.stderr)
    if not comps:
        raise InputError(f"no samples of {args.baseline} and {args.candidate} match the selection"
                         + "".join(f" {k}={v}" for k, v in (("--test", args.test), ("--metric", args.metric),
                                                            ("--pair", args.pair)) if v))
    if args.json:
        print(json.dumps(to_json(comps, args.baseline, args.candidate, thresholds)
                         | {"warnings": warnings, "counters": [c.to_dict() for c in counters]},
                         indent=2, sort_keys=True))
    else:
        print(format_table(comps, args.baseline, args.candidate))
        text = countercmp.format_text(counters, args.baseline, args.candidate)
        if text:
            print("\n" + text)
    return exit_code(comps)
