"""Parser of time_bench result lines: page_pool benchmark logs in every form they travel in.

    result = parse(text)
    result.records    # one Record per result
    result.warnings   # one ParseWarning per line that looks like a result or a failure note
                      # but cannot be read (1-based line number, the line, why)

Pure: no I/O. The result line comes from time_bench_loop() (out-of-tree
time_bench, the upstream selftest module, our hwt_pp_bench):

    Type:%s Per elem: %llu cycles(tsc) %llu.%03llu ns (step:%d) - (measurement period
    time:%llu.%09u sec time_interval:%llu) - (invoke count:%llu tsc_interval:%llu)

(one line in the kernel log). Accepted around and inside it:

- a module prefix `word: ` (`time_bench:`, `bench_page_pool:`, `hwt_pp_bench:`, ...);
- dmesg time stamps `[ 1234.567890]`, `dmesg -T`'s `[Tue Jan  7 15:15:18 2025]`,
  `dmesg -x`'s `kern  :info  : `, `dmesg -r`'s `<6>`, caller ids `[T123]`,
  journalctl's `Jan 07 15:15:18 host kernel: `, and /dev/kmsg records
  `6,1234,5678,-;msg` (their ` KEY=value` continuation lines are skipped);
- mail quoting (`> `, `>> `, `| `, mixed) and results wrapped over 2-3 lines at
  any blank, each continuation line quoted or not;
- indentation by spaces or tabs (code blocks in mail, notes and wiki pages), before
  or after the quote marks, with or without a time stamp;
- shorter forms: ending after `(step:N)`, or after `ns` without `Type:` as the
  upstream selftest script greps them (`no-softirq-page_pool01 Per elem: 19 cycles(tsc) 5.371 ns`);
- type names with blanks (`kmem fastpath reuse`): the type runs lazily up to ` Per elem: `.

The printed cycles are floor(tsc_interval / invoke count) and the printed ns
are truncated too, so a Record also holds the exact quotients
(`cycles_exact`, `ns_exact`) when the line carries the counts.

A result cut after its printed ns (inside the trailing parentheses: a line
length limit, a mail client) is a short record (cycles, ns, and step and
time_interval if they are whole) plus a warning naming the line.

Warnings (the record is dropped): a truncated result (cut before the end of
its printed ns), a result-looking line that does not parse, per-CPU and
PMU lines of the concurrent/PMU APIs, and the benchmarks' failure notes
(ERR/ERROR/ABORT/WARNING/WARN, "Cannot use page_pool fast-path", "Error(..)
creating page_pool", ...). A record whose printed figures disagree with its
own counts is kept and warned about. Other kernel lines are ignored.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

__all__ = ["Record", "ParseWarning", "Warning", "ParseResult", "parse", "RECORD_KEYS"]

RECORD_KEYS = ("type", "cycles", "ns", "step", "time_interval", "invoke_count", "tsc_interval",
               "cycles_exact", "line", "module", "ns_exact")


@dataclass
class Record:
    type: str
    cycles: int                      # printed (floor of the exact value)
    ns: float                        # printed, 3 decimals, truncated
    step: int | None = None
    time_interval: int | None = None  # ns for all invocations
    invoke_count: int | None = None
    tsc_interval: int | None = None   # TSC ticks for all invocations
    cycles_exact: float | None = None  # tsc_interval / invoke_count
    line: int = 0                    # 1-based line where the result starts
    module: str | None = None        # the printk prefix (`time_bench`, `bench_page_pool`, ...)
    ns_exact: float | None = None    # time_interval / invoke_count

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ParseWarning:
    line: int        # 1-based
    text: str        # the line as it was (first line of a wrapped result)
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}: {self.text.strip()[:200]}"


Warning = ParseWarning   # the name the project's contract uses


@dataclass
class ParseResult:
    records: list[Record] = field(default_factory=list)
    warnings: list[ParseWarning] = field(default_factory=list)


# -- envelopes ---------------------------------------------------------------------------

_QUOTE = re.compile(r"^[ \t]*(?:[>|][ \t]?)+")
_LEAD = re.compile(r"^[ \t]*(?:[>|][ \t]*)*")     # quote marks and the indentation around them
_KMSG = re.compile(r"^\d+,\d+,\d+,[^;\s]*;")
_KMSG_DICT = re.compile(r"^ [A-Z0-9_]+=")
_SYSLOG_PRI = re.compile(r"^<\d{1,3}>")
_FACLEV = re.compile(r"^[a-z]+ *: *(?:emerg|alert|crit|err|warn|notice|info|debug) *: ")
_TS = re.compile(r"^\[ *\d+\.\d+\] ?")
_TS_T = re.compile(r"^\[[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}\] ?")
_CALLER = re.compile(r"^\[ *[TC]\d+\] ?")
_JOURNAL = re.compile(r"^(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT[\d:.,+-]+) \S+ kernel: ")
_MODULE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.-]*):[ \t]+(?=\S)")


def _unquote(line: str) -> str:
    """Quote marks only: what is left of a kmsg dictionary line still starts with its blank."""
    return _QUOTE.sub("", line, count=1)


def _dedent(line: str) -> str:
    """Quote marks and indentation (code blocks in mail, notes, wiki pages) off the line."""
    return _LEAD.sub("", line, count=1)


def _envelope(text: str) -> tuple[str, bool]:
    """Strip log envelopes (kmsg header, priorities, time stamps); say whether there was one."""
    had = False
    for rx in (_KMSG, _SYSLOG_PRI, _FACLEV, _TS, _TS_T, _CALLER, _JOURNAL, _CALLER):
        m = rx.match(text)
        if m:
            text = text[m.end():].lstrip(" \t")
            had = True
    return text, had


def _body(line: str) -> tuple[str, str | None, bool]:
    """Line -> (message body, module prefix or None, had a log envelope)."""
    text, had = _envelope(_dedent(line))
    module = None
    m = _MODULE.match(text)
    if m and not text.startswith(("Type:", "Sum Type:")):
        module = m.group(1)
        text = text[m.end():]
    return text, module, had


# -- the result line, stage by stage ------------------------------------------------------

_STAGES = (
    re.compile(r"(?P<cycles>\d+) cycles\(tsc\) "),
    re.compile(r"(?P<ns_i>\d+)\.(?P<ns_f>\d{3})(?![\d.]) ns\b"),
    re.compile(r" \(step:(?P<step>-?\d+)\)"),
    re.compile(r" - \(measurement period time:(?P<sec>\d+)\.(?P<sec_f>\d{9}) sec time_interval:(?P<ti>\d+)\)"),
    re.compile(r" - \(invoke count:(?P<inv>\d+) tsc_interval:(?P<tsc>\d+)\)"),
)
_PER_ELEM = " Per elem: "
FULL = len(_STAGES) + 1      # type + every stage
_PRINTED = 3                 # type, cycles, ns: what a result cut further on still carries
TRUNCATED_KEPT = "truncated result (kept as a short record: printed cycles and ns)"


@dataclass
class _Match:
    stages: int                # 0: no type/Per elem; 1: type; ... FULL: everything
    groups: dict
    rest: str                  # text after the last stage that matched
    type: str | None = None


def _norm(text: str) -> str:
    return " ".join(text.split())


def _match(body: str) -> _Match:
    text = _norm(body)
    if text.startswith("Per elem: "):
        text = " " + text
    if text.startswith("Type:"):
        text = text[5:]
    i = text.find(_PER_ELEM)
    if i < 0:
        return _Match(0, {}, text)
    typ = text[:i].strip()
    pos = i + len(_PER_ELEM)
    groups: dict = {}
    n = 1
    for rx in _STAGES:
        m = rx.match(text, pos)
        if not m:
            break
        groups.update(m.groupdict())
        pos = m.end()
        n += 1
    return _Match(n, groups, text[pos:], typ or None)


def _status(m: _Match) -> str:
    """'full', 'ok' (a valid shorter form), 'open' (ends early: a wrap may continue it), 'bad'."""
    if m.stages == FULL:
        return "full"
    rest = m.rest.strip()
    if m.stages in (3, 4):            # ends after `ns` or after `(step:N)`
        if not rest:
            return "ok" if m.type else "open"
        return "open" if rest[0] in "(-" else "ok"
    return "open"


def _record(m: _Match, lineno: int, module: str | None) -> Record:
    g = m.groups
    inv = int(g["inv"]) if g.get("inv") is not None else None
    tsc = int(g["tsc"]) if g.get("tsc") is not None else None
    ti = int(g["ti"]) if g.get("ti") is not None else None
    return Record(
        type=m.type or "",
        cycles=int(g["cycles"]),
        ns=float(f"{g['ns_i']}.{g['ns_f']}"),
        step=int(g["step"]) if g.get("step") is not None else None,
        time_interval=ti,
        invoke_count=inv,
        tsc_interval=tsc,
        cycles_exact=(tsc / inv) if tsc is not None and inv else None,
        line=lineno,
        module=module,
        ns_exact=(ti / inv) if ti is not None and inv else None,
    )


def _inconsistent(m: _Match, r: Record) -> str | None:
    g = m.groups
    if r.tsc_interval is not None and r.invoke_count and r.tsc_interval // r.invoke_count != r.cycles:
        return (f"printed cycles {r.cycles} differ from tsc_interval/invoke count "
                f"{r.tsc_interval}/{r.invoke_count}")
    if g.get("sec") is not None and r.time_interval is not None \
            and int(g["sec"]) * 1_000_000_000 + int(g["sec_f"]) != r.time_interval:
        return f"measurement period {g['sec']}.{g['sec_f']} s differs from time_interval {r.time_interval}"
    return None


# -- notes ----------------------------------------------------------------------------------

_NOTE = re.compile(r"^(?:ERR|ERROR|ABORT|WARNING|WARN)\b")
_NOTE_ANY = re.compile(r"Cannot use page_pool fast-path|creating page_pool|recycling wasn't used|"
                       r"Failed to start test func|Module param loops|function being timed failed")
_LOOKS = re.compile(r"Per elem|cycles\(tsc\)|tsc_interval|invoke count:|measurement period time|"
                    r"^(?:Sum )?Type:|\bType:\S")


def _note_reason(body: str) -> str | None:
    if _NOTE.match(body) or _NOTE_ANY.search(body):
        return "benchmark note"
    return None


def _other_reason(body: str) -> str:
    t = _norm(body)
    if re.match(r"^(?:Sum )?Type:.*\bAverage: ", t):
        return "summary line of the concurrent API (not imported)"
    if re.match(r"^Type:\S.*? CPU\(\d+\) \d+ cycles\(tsc\)", t):
        return "per-CPU result of the concurrent API (not imported)"
    if re.match(r"^Type:.*? PMU inst/clock", t):
        return "PMU counter line (not imported)"
    return "looks like a result but cannot be read"


# -- parse -------------------------------------------------------------------------------------

MAX_WRAP = 4     # a result spans at most this many lines (a 230-char line wrapped at 72 columns)


def _rank(m: _Match) -> tuple[int, int]:
    return (m.stages, {"full": 3, "ok": 2, "open": 1}.get(_status(m), 0))


def _is_continuation(raw: str, sofar: _Match) -> bool:
    if not raw.strip() or _KMSG_DICT.match(_unquote(raw)):
        return False
    text = _dedent(raw)
    _, had = _envelope(text)
    if had:                     # a new log line, not the rest of a wrapped one
        return False
    if "Type:" in text:
        return False
    if "Per elem" in text and sofar.stages > 0:
        return False
    return True


def parse(text: str) -> ParseResult:
    """Records and warnings of a log (any of the forms in the module doc)."""
    if not isinstance(text, str):
        raise TypeError("parse() takes the log as str")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    out = ParseResult()
    n = len(lines)
    i = 0
    while i < n:
        raw = lines[i]
        lineno = i + 1
        stripped = _unquote(raw)
        if _KMSG_DICT.match(stripped) or not stripped.strip():
            i += 1
            continue
        body, module, _had = _body(raw)
        note = _note_reason(body)
        if note:
            out.warnings.append(ParseWarning(lineno, raw, note))
            i += 1
            continue
        candidate = "Per elem" in body or bool(re.search(r"(?:^|\s)Type:\S", body))
        if not candidate:
            # a type alone on a line, `Per elem: ...` on the next (a wrapped grep'd result)
            if i + 1 < n and _norm(_envelope(_dedent(lines[i + 1]))[0]).startswith("Per elem: ") \
                    and not _envelope(_dedent(lines[i + 1]))[1] and 0 < len(body.strip()) <= 80 \
                    and not _LOOKS.search(body):
                candidate = True
        if not candidate:
            if _LOOKS.search(body):
                out.warnings.append(ParseWarning(lineno, raw, _other_reason(body)))
            i += 1
            continue
        # Join up to MAX_WRAP lines; keep the shortest join that gets furthest into the format.
        joined = body
        m = _match(joined)
        used = 1
        best = (m, used)
        while _status(m) != "full" and used < MAX_WRAP and i + used < n:
            nxt = lines[i + used]
            if not _is_continuation(nxt, m):
                break
            joined = joined + " " + _dedent(nxt).strip()
            m = _match(joined)
            used += 1
            if _rank(m) > _rank(best[0]):
                best = (m, used)
        m, used = best
        st = _status(m)
        cut = st == "open" and m.stages >= _PRINTED and bool(m.type)
        if (st in ("full", "ok") and m.type) or cut:
            rec = _record(m, lineno, module)
            if rec.invoke_count == 0:
                # time_bench prints a Type line of zeros after ABORT/ERR: nothing to import
                out.warnings.append(ParseWarning(lineno, raw, "invoke count 0 (the timing failed)"))
            elif rec.invoke_count is None and rec.cycles == 0 and rec.ns == 0:
                # the same line of zeros, cut or in a short form: no count to tell it by
                out.warnings.append(ParseWarning(lineno, raw, "zero cycles and ns (the timing failed)"))
            else:
                out.records.append(rec)
                if cut:
                    out.warnings.append(ParseWarning(lineno, raw, TRUNCATED_KEPT))
                bad = _inconsistent(m, rec)
                if bad:
                    out.warnings.append(ParseWarning(lineno, raw, bad))
        elif m.stages >= 1 and m.type:
            out.warnings.append(ParseWarning(lineno, raw, "truncated result"))
        elif m.stages >= 1:
            out.warnings.append(ParseWarning(lineno, raw, "result without a type name"))
        else:
            out.warnings.append(ParseWarning(lineno, raw, _other_reason(body)))
        i += used
    return out


def summary(result: ParseResult) -> str:
    """One line: how many records of how many types, how many warnings."""
    types = dict.fromkeys(r.type for r in result.records)
    return f"{len(result.records)} records ({len(types)} types), {len(result.warnings)} warnings"
