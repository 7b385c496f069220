"""hwtests.timebench: every log form, exact figures, warnings, garbage.

Expected values are computed here from the raw counts written into the sample
logs (tests/data/pagepool/), never taken from the parser: printed cycles =
tsc_interval // invoke count, cycles_exact = tsc_interval / invoke count,
ns_exact = time_interval / invoke count, printed ns = time_bench's truncated
quotient with 3 decimals.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from hwtests import timebench as tb

DATA = Path(__file__).parent / "data" / "pagepool"


def read(name: str) -> str:
    return (DATA / name).read_text()


def printed_ns(ti: int, inv: int) -> float:
    """time_bench's ns: integer quotient, then remainder / (inv / 1000) as 3 digits."""
    q, r = divmod(ti, inv)
    return float(f"{q}.{r // (inv // 1000):03d}")


def check(rec: tb.Record, typ: str, inv: int, tsc: int, ti: int, *, line: int | None = None,
          module: str | None = "unset", step: int = 0) -> None:
    assert rec.type == typ
    assert rec.invoke_count == inv
    assert rec.tsc_interval == tsc
    assert rec.time_interval == ti
    assert rec.step == step
    assert rec.cycles == tsc // inv
    assert rec.ns == printed_ns(ti, inv)
    assert abs(Fraction(rec.cycles_exact) - Fraction(tsc, inv)) < Fraction(1, 10**9)   # the exact quotient
    assert rec.cycles_exact == tsc / inv
    assert rec.ns_exact == ti / inv
    if line is not None:
        assert rec.line == line
    if module != "unset":
        assert rec.module == module


# The counts written into the sample logs: (type, invoke count, tsc_interval, time_interval).
OOT = [
    ("for_loop", 100000000, 119003912, 33056642),
    ("atomic_inc", 100000000, 1803104530, 500862369),
    ("lock", 10000000, 571213490, 158670414),
    ("no-softirq-page_pool01", 10000000, 199210364, 55336212),
    ("no-softirq-page_pool02", 10000000, 553402771, 153722991),
    ("no-softirq-page_pool03", 10000000, 2603330915, 723147476),
    ("tasklet_page_pool01_fast_path", 10000000, 190054880, 52792911),
    ("tasklet_page_pool02_ptr_ring", 10000000, 531888120, 147746700),
    ("tasklet_page_pool03_slow", 10000000, 2454011234, 681669787),
]
UPSTREAM_T = [
    ("for_loop", 100000000, 25417113, 9982380),
    ("atomic_inc", 100000000, 1306214407, 513008812),
    ("lock", 10000000, 376412533, 147831190),
    ("no-softirq-page_pool01", 10000000, 137510229, 54005004),
    ("no-softirq-page_pool02", 10000000, 1322871066, 519545337),
    ("no-softirq-page_pool03", 10000000, 5119734490, 2010710207),
]
KMSG = [
    ("for_loop", 100000000, 26004471, 10201399),
    ("no-softirq-page_pool01", 10000000, 140020915, 54926007),
    ("no-softirq-page_pool02", 10000000, 1333911023, 523242500),
]
MAIL = [
    ("tasklet_page_pool01_fast_path", 10000000, 54123517, 21256001),
    ("tasklet_page_pool02_ptr_ring", 10000000, 158410312, 62215733),
    ("tasklet_page_pool03_slow", 10000000, 1530552007, 601144518),
    ("kmem fastpath reuse", 10000000, 187300456, 52028960),
    ("qmempool fastpath BH-disable", 10000000, 215671001, 59908611),
    ("no-softirq-page_pool01", 10000000, 53877002, 21160010),
]


def test_oot_dmesg_timestamps_and_notes():
    r = tb.parse(read("oot-dmesg.log"))
    assert [x.type for x in r.records] == [t for t, *_ in OOT]
    for rec, (typ, inv, tsc, ti) in zip(r.records, OOT):
        check(rec, typ, inv, tsc, ti, module="time_bench")
    assert [x.line for x in r.records] == [2, 3, 4, 7, 9, 11, 14, 16, 18]
    # fast-path figures spelled out once
    fp = r.records[6]
    assert (fp.cycles, fp.ns, fp.cycles_exact) == (19, 5.279, 19.005488)
    # "Cannot use page_pool fast-path" notes are warnings; "in_serving_softirq fast-path" and noise are not
    assert [(w.line, w.reason) for w in r.warnings] == [(6, "benchmark note"), (8, "benchmark note"),
                                                        (10, "benchmark note")]
    assert all("Cannot use page_pool fast-path" in w.text for w in r.warnings)


def test_upstream_dmesg_T():
    r = tb.parse(read("upstream-dmesg-T.log"))
    assert len(r.records) == len(UPSTREAM_T)
    for rec, (typ, inv, tsc, ti) in zip(r.records, UPSTREAM_T):
        check(rec, typ, inv, tsc, ti, module="bench_page_pool")
    assert r.records[0].cycles == 0 and r.records[0].ns == 0.099      # for_loop below one tick
    assert r.records[3].cycles == 13 and r.records[3].ns == 5.400
    assert len(r.warnings) == 3 and {w.reason for w in r.warnings} == {"benchmark note"}


def test_kmsg_raw_records_and_dictionary_lines():
    r = tb.parse(read("upstream.kmsg"))
    assert [x.line for x in r.records] == [6, 8, 10]
    for rec, (typ, inv, tsc, ti) in zip(r.records, KMSG):
        check(rec, typ, inv, tsc, ti, module="bench_page_pool")
    assert [w.line for w in r.warnings] == [7, 9, 11]       # the notes; ` SUBSYSTEM=usb` etc. ignored


def test_mail_quoted_and_wrapped():
    r = tb.parse(read("mail-quoted.txt"))
    assert [x.type for x in r.records] == [t for t, *_ in MAIL]
    assert r.warnings == []
    # 3 quoted lines; 3 lines, continuations unquoted; wrapped inside the type name; 4 lines `> > `
    for k in (0, 1, 3, 4):
        typ, inv, tsc, ti = MAIL[k]
        check(r.records[k], typ, inv, tsc, ti)
    assert [x.line for x in r.records] == [4, 7, 10, 14, 16, 22]
    assert r.records[3].module == "qmempool_bench" and r.records[0].module == "time_bench"
    # `>> ` quoted short form (ends after the step)
    slow = r.records[2]
    typ, inv, tsc, ti = MAIL[2]
    assert (slow.type, slow.cycles, slow.ns, slow.step) == (typ, tsc // inv, printed_ns(ti, inv), 0)
    assert slow.invoke_count is slow.tsc_interval is slow.time_interval is slow.cycles_exact is None
    # the grep'd form quoted in prose
    g = r.records[5]
    typ, inv, tsc, ti = MAIL[5]
    assert (g.type, g.cycles, g.ns, g.step, g.module, g.cycles_exact) == (typ, 5, 2.116, None, None, None)
    assert g.ns == printed_ns(ti, inv) and g.cycles == tsc // inv


def test_selftest_script_output():
    r = tb.parse(read("selftest-script.txt"))
    want = [("no-softirq-page_pool01", 19, 5.279), ("no-softirq-page_pool02", 56, 15.555),
            ("no-softirq-page_pool03", 261, 72.722)]
    assert [(x.type, x.cycles, x.ns) for x in r.records] == want
    assert [x.line for x in r.records] == [4, 6, 8]
    assert all(x.step is None and x.cycles_exact is None and x.module is None for x in r.records)
    assert r.warnings == []


def test_short_form_and_type_with_spaces():
    r = tb.parse(read("short-form.log"))
    assert [(x.type, x.cycles, x.ns, x.step, x.module) for x in r.records] == [
        ("page_bench01 alloc_pages_order_step", 259001777 // 1000000, 71.944, 3, "page_bench04_bulk"),
        ("time_bulk_page_alloc_free_array", 291776000 // 3200000, printed_ns(81048882, 3200000), 32,
         "page_bench04_bulk"),
    ]
    assert all(x.invoke_count is None and x.cycles_exact is None for x in r.records)


def test_errors_log():
    r = tb.parse(read("errors.log"))
    got = [(w.line, w.reason) for w in r.warnings]
    assert got == [
        (1, "truncated result"),            # cut inside the ns
        (2, "truncated result"),            # cut inside the cycles
        (3, tb.TRUNCATED_KEPT),             # stops after time_interval: a short record
        (4, tb.TRUNCATED_KEPT),             # cut inside tsc_interval: a short record
        (5, "benchmark note"),              # ERR: need more loops
        (6, "benchmark note"),              # ABORT
        (7, "invoke count 0 (the timing failed)"),
        (8, "benchmark note"),              # WARNING: Invoke count smaller than loops
        (10, "benchmark note"),             # Cannot use page_pool fast-path
        (12, "per-CPU result of the concurrent API (not imported)"),
        (13, "summary line of the concurrent API (not imported)"),
        (14, "PMU counter line (not imported)"),
        (15, "printed cycles 60 differ from tsc_interval/invoke count 571213490/10000000"),
        (17, "benchmark note"),             # Error(-12) creating page_pool
        (18, "looks like a result but cannot be read"),
    ]
    lines = read("errors.log").splitlines()
    assert all(w.text == lines[w.line - 1] for w in r.warnings)
    # the two cut after their ns are short records; the short run after the WARNING is a
    # record (5000 invocations), as is the inconsistent one
    assert [x.line for x in r.records] == [3, 4, 9, 15]
    for cut in r.records[:2]:
        assert (cut.type, cut.cycles, cut.ns, cut.step, cut.time_interval) == \
            ("no-softirq-page_pool03", 201, 20.114, 0, 201146055)
        assert cut.invoke_count is cut.tsc_interval is cut.cycles_exact is cut.ns_exact is None
    check(r.records[2], "tasklet_page_pool02_ptr_ring", 5000, 271002, 75280)
    assert r.records[3].cycles == 60 and r.records[3].cycles_exact == 571213490 / 10000000


@pytest.mark.parametrize("name", ["hwt_pp_bench-61-tcg.dmesg", "hwt_pp_bench-61-tcg.kmsg",
                                  "hwt_pp_bench-612-tcg.dmesg", "hwt_pp_bench-612-tcg.kmsg"])
def test_our_module_real_logs(name):
    """Logs of hwt_pp_bench in Debian 6.1/6.12 guests (QEMU TCG): every Type line is a record."""
    text = read(name)
    r = tb.parse(text)
    assert r.warnings == []
    assert [x.type for x in r.records] == [
        "for_loop", "no-softirq-page_pool01", "no-softirq-page_pool02", "no-softirq-page_pool03",
        "tasklet_page_pool01_fast_path", "tasklet_page_pool02_ptr_ring", "tasklet_page_pool03_slow"]
    raw = [ln for ln in text.splitlines() if "Type:" in ln]
    for rec, ln in zip(r.records, raw):
        nums = dict(re.findall(r"(invoke count|tsc_interval|time_interval):(\d+)", ln))
        inv, tsc, ti = int(nums["invoke count"]), int(nums["tsc_interval"]), int(nums["time_interval"])
        assert inv == 200000 and rec.module == "hwt_pp_bench"
        check(rec, rec.type, inv, tsc, ti)


# -- forms one by one -----------------------------------------------------------------------

FULL = ("Type:no-softirq-page_pool01 Per elem: 19 cycles(tsc) 5.533 ns (step:0) - (measurement period "
        "time:0.055336212 sec time_interval:55336212) - (invoke count:10000000 tsc_interval:199210364)")
F_INV, F_TSC, F_TI = 10000000, 199210364, 55336212


@pytest.mark.parametrize("prefix,module", [
    ("", None),
    ("time_bench: ", "time_bench"),
    ("[ 1234.567890] time_bench: ", "time_bench"),
    ("[    4.000001] bench_page_pool: ", "bench_page_pool"),
    ("[Tue Jan  7 15:15:18 2025] bench_page_pool: ", "bench_page_pool"),
    ("6,1234,5678,-;time_bench: ", "time_bench"),
    ("4,99,123456789,c;bench_page_pool_simple: ", "bench_page_pool_simple"),
    ("<6>[   12.000000] time_bench: ", "time_bench"),
    ("kern  :info  : [ 1234.567890] time_bench: ", "time_bench"),
    ("[ 1234.567890] [  T412] time_bench: ", "time_bench"),
    ("Jan 07 15:15:18 host1 kernel: time_bench: ", "time_bench"),
    ("> [ 1234.567890] time_bench: ", "time_bench"),
    (">> > [ 1234.567890] time_bench: ", "time_bench"),
    ("| time_bench: ", "time_bench"),
])
def test_envelopes(prefix, module):
    r = tb.parse("[ 1.0] unrelated: line\n" + prefix + FULL + "\n")
    assert r.warnings == []
    assert len(r.records) == 1
    check(r.records[0], "no-softirq-page_pool01", F_INV, F_TSC, F_TI, line=2, module=module)


def _spaces(s: str) -> list[int]:
    return [i for i, c in enumerate(s) if c == " "]


@pytest.mark.parametrize("quote", ["", "> ", "| "])
def test_wrapped_at_every_blank_in_two_lines(quote):
    head = "[ 5012.345678] time_bench: "
    text = head + FULL
    for i in _spaces(text)[3:]:            # not inside the time stamp envelope
        for cont_quote in ("", quote):
            log = f"{quote}{text[:i]}\n{cont_quote}{text[i + 1:]}\n[ 5012.4] next: line\n"
            r = tb.parse(log)
            assert r.warnings == [], (i, log)
            assert len(r.records) == 1, (i, log)
            check(r.records[0], "no-softirq-page_pool01", F_INV, F_TSC, F_TI, line=1, module="time_bench")


def test_wrapped_in_three_lines_everywhere():
    text = "> [ 5012.345678] time_bench: " + FULL
    sp = _spaces(text)[4:]
    n = 0
    for a in sp:
        for b in sp:
            if b <= a:
                continue
            log = "\n".join([text[:a], "> " + text[a + 1:b], text[b + 1:], "", "Thanks"])
            r = tb.parse(log)
            assert r.warnings == [] and len(r.records) == 1, log
            check(r.records[0], "no-softirq-page_pool01", F_INV, F_TSC, F_TI, line=1)
            n += 1
    assert n == 136        # C(17, 2) ways to place two wraps


def test_type_with_blanks_wrapped_inside_the_name():
    r = tb.parse("time_bench: Type:kmem bulk_quick_reuse\n  and more Per elem: 7 cycles(tsc) 2.001 ns (step:8)\n")
    assert [(x.type, x.cycles, x.ns, x.step) for x in r.records] == [("kmem bulk_quick_reuse and more", 7, 2.001, 8)]


def test_grepd_form_type_on_its_own_line():
    r = tb.parse("no-softirq-page_pool01\nPer elem: 19 cycles(tsc) 5.371 ns\n")
    assert [(x.type, x.cycles, x.ns, x.line) for x in r.records] == [("no-softirq-page_pool01", 19, 5.371, 1)]


def test_every_cut_is_a_record_of_a_complete_form_or_a_warning():
    """Nothing that looks like a result disappears: each prefix of a full line gives
    a correct shorter-form record (cut after `ns` or after `(step:0)`) or a warning."""
    text = "[ 7.000001] time_bench: " + FULL
    start = text.index("Type:") + len("Type:x")
    after_ns = text.index(" ns ") + len(" ns")
    forms = cut = 0
    for k in range(start, len(text) + 1):
        r = tb.parse(text[:k] + "\n[ 7.1] other: line\n")
        if k < after_ns:                     # cut inside the type, cycles or ns: nothing to keep
            assert r.records == [] and len(r.warnings) == 1, text[:k]
            assert r.warnings[0].reason in ("truncated result", "looks like a result but cannot be read"), text[:k]
            continue
        assert len(r.records) == 1, text[:k]
        rec = r.records[0]
        assert (rec.type, rec.cycles, rec.ns, rec.line) == ("no-softirq-page_pool01", 19, 5.533, 1)
        if k == len(text):
            assert r.warnings == [] and rec.invoke_count == F_INV
        elif text[:k].rstrip().endswith((" ns", "(step:0)")):
            assert r.warnings == [] and rec.invoke_count is None      # a complete shorter form
            forms += 1
        else:                                # cut inside the trailing parentheses
            assert [(w.line, w.reason) for w in r.warnings] == [(1, tb.TRUNCATED_KEPT)], text[:k]
            assert rec.invoke_count is None and rec.cycles_exact is None
            assert rec.step == (0 if "(step:0)" in text[:k] else None)
            assert rec.time_interval == (F_TI if f"time_interval:{F_TI})" in text[:k] else None)
            cut += 1
    assert forms == 4      # after `ns`, `ns `, `(step:0)`, `(step:0) `
    assert cut == len(text) - after_ns - forms


def test_noise_is_ignored_without_warning():
    noise = """[    0.000000] Linux version 6.12.117+deb12-cloud-amd64 (debian-kernel@lists.debian.org)
[    1.100000] pci 0000:00:01.0: [8086:7000] type 00 class 0x060100
[    2.000000] clocksource: Long readout interval, skipping watchdog check: cs_nsec: 4225837703
[    3.000000] hwt_pp_bench: loading out-of-tree module taints kernel.
[    3.000100] hwt_pp_bench: Loaded (loops=200000 run_flags=0xffffffff)
6,355,4527756,-;EXT4-fs (vda): mounted filesystem
 SUBSYSTEM=block
Fast path results:
"""
    assert tb.parse(noise) == tb.ParseResult([], [])


def test_records_as_json_have_the_contract_keys():
    r = tb.parse(read("oot-dmesg.log"))
    d = json.loads(json.dumps([x.to_dict() for x in r.records]))
    assert set(d[0]) == set(tb.RECORD_KEYS)
    for k in ("type", "cycles", "ns", "step", "time_interval", "invoke_count", "tsc_interval", "cycles_exact", "line"):
        assert k in d[0]
    assert tb.Warning is tb.ParseWarning


# Counts written into indented-notes.txt (a mail quoting a code block, tab-indented notes,
# a line cut by a wiki's line limit).
INDENTED = [
    ("for_loop", 100000000, 41803120, 11612400),
    ("no-softirq-page_pool01", 10000000, 183440271, 50955631),
    ("no-softirq-page_pool02", 10000000, 561004322, 155834533),
    ("no-softirq-page_pool03", 10000000, 2611874410, 725520670),
]
FAST_CUT = ("tasklet_page_pool01_fast_path", 10000000, 176322905, 48978584)


def test_indented_quoted_and_cut_notes():
    text = read("indented-notes.txt")
    r = tb.parse(text)
    assert [x.type for x in r.records] == [t for t, *_ in INDENTED] + [FAST_CUT[0]]
    # `>     [ ts] time_bench:`, `>     time_bench:`, tab + time stamp + tab, tab-indented and wrapped
    assert [x.line for x in r.records] == [6, 8, 14, 15, 20]
    for rec, (typ, inv, tsc, ti) in zip(r.records, INDENTED):
        check(rec, typ, inv, tsc, ti, module="time_bench")
    cut = r.records[-1]
    typ, inv, tsc, ti = FAST_CUT
    assert (cut.cycles, cut.ns, cut.step, cut.module) == (tsc // inv, printed_ns(ti, inv), 0, "time_bench")
    assert cut.time_interval is cut.invoke_count is cut.cycles_exact is cut.ns_exact is None
    lines = text.splitlines()
    assert [(w.line, w.reason, w.text) for w in r.warnings] == [
        (7, "benchmark note", lines[6]), (20, tb.TRUNCATED_KEPT, lines[19])]


INDENTS = ["    ", "\t", "  \t ", "\t\t", "> ", ">     ", "> \t", ">>   ", "> >\t", "  > ", "\t| ", ">\t>  "]


@pytest.mark.parametrize("indent", INDENTS)
@pytest.mark.parametrize("envelope,module", [
    ("", None),
    ("time_bench: ", "time_bench"),
    ("time_bench:\t", "time_bench"),
    ("[ 1234.567890] time_bench: ", "time_bench"),
    ("[ 1234.567890]\t bench_page_pool: ", "bench_page_pool"),
    ("[Tue Jan  7 15:15:18 2025] bench_page_pool: ", "bench_page_pool"),
    ("Jan 07 15:15:18 host1 kernel: time_bench: ", "time_bench"),
])
def test_indented_lines_parse_like_unindented(indent, envelope, module):
    """The same result and note with and without indentation give the same records and warnings."""
    note = "bench_page_pool_simple: time_bench_page_pool01_fast_path(): Cannot use page_pool fast-path"
    plain = tb.parse(f"{envelope}{note}\n{envelope}{FULL}\n")
    r = tb.parse(f"{indent}{envelope}{note}\n{indent}{envelope}{FULL}\n")
    assert [x.to_dict() for x in r.records] == [x.to_dict() for x in plain.records]
    assert [(w.line, w.reason) for w in r.warnings] == [(w.line, w.reason) for w in plain.warnings] \
        == [(1, "benchmark note")]
    check(r.records[0], "no-softirq-page_pool01", F_INV, F_TSC, F_TI, line=2, module=module)


@pytest.mark.parametrize("indent", ["    ", "\t", "> \t"])
def test_indented_and_wrapped_at_every_blank(indent):
    text = "[ 5012.345678] time_bench: " + FULL
    for i in _spaces(text)[3:]:
        log = f"{indent}{text[:i]}\n{indent}  {text[i + 1:]}\n{indent}[ 5012.4] next: line\n"
        r = tb.parse(log)
        assert r.warnings == [] and len(r.records) == 1, (i, log)
        check(r.records[0], "no-softirq-page_pool01", F_INV, F_TSC, F_TI, line=1, module="time_bench")


def test_indented_time_stamped_line_is_no_continuation():
    """A result cut after its ns, then the next indented log line: the cut one is kept short,
    the next one is not glued onto it."""
    cut = FULL[:FULL.index(" - (invoke")]
    r = tb.parse(f"    [ 1.0] time_bench: {cut}\n    [ 1.1] time_bench: {FULL}\n")
    assert [(x.line, x.invoke_count, x.time_interval) for x in r.records] == [(1, None, F_TI), (2, F_INV, F_TI)]
    assert [(w.line, w.reason) for w in r.warnings] == [(1, tb.TRUNCATED_KEPT)]


@pytest.mark.parametrize("zeros", [
    "Type:tasklet_page_pool01_fast_path Per elem: 0 cycles(tsc) 0.000 ns (step:0) - (measurement period "
    "time:0.000000000 sec time_interval:0) - (invoke cou",
    "tasklet_page_pool01_fast_path Per elem: 0 cycles(tsc) 0.000 ns",
])
def test_line_of_zeros_without_counts_is_no_record(zeros):
    """time_bench's line of zeros after an ABORT, cut before its invoke count or in the short form."""
    r = tb.parse(f"[ 1.0] time_bench: {zeros}\n")
    assert r.records == []
    assert [(w.line, w.reason) for w in r.warnings] == [(1, "zero cycles and ns (the timing failed)")]


def test_crlf_and_tabs():
    r = tb.parse("[ 1.0] time_bench: " + FULL.replace(" Per", "\tPer") + "\r\n")
    assert len(r.records) == 1 and r.records[0].cycles == 19


def test_not_str():
    with pytest.raises(TypeError):
        tb.parse(b"bytes")  # type: ignore[arg-type]


# -- garbage ---------------------------------------------------------------------------------

_ALPHABET = st.sampled_from(list("Type:Per elem cycles(tsc) ns step- measurement period time invoke count "
                                 "tsc_interval 0123456789.,;[]<>|\n\r\t ") + ["Type:", " Per elem: ",
                                 " cycles(tsc) ", " ns", " (step:", ") - (", "\n> ", "\n", "6,1,2,-;",
                                 "[ 1.5] ", "ERR", "WARNING:", " SUB=x"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_ALPHABET, max_size=80).map("".join))
def test_garbage_made_of_format_pieces_never_raises(text):
    r = tb.parse(text)
    for rec in r.records:
        assert rec.line >= 1 and isinstance(rec.cycles, int)
    for w in r.warnings:
        assert 1 <= w.line <= text.count("\n") + text.count("\r") + 1


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_random_text_never_raises(text):
    tb.parse(text)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"),
                        max_size=60), max_size=8))
def test_valid_line_survives_surrounding_noise(noise):
    """A time-stamped result is found whatever lines surround it (noise lines are not
    continuations of a full result, and a note or garbage line stays a single warning)."""
    lines = [f"[ 9.{i:06d}] {n}" for i, n in enumerate(noise)]
    lines.insert(len(lines) // 2, "[ 9.500000] time_bench: " + FULL)
    r = tb.parse("\n".join(lines))
    ours = [x for x in r.records if x.tsc_interval == F_TSC]
    assert len(ours) == 1
    check(ours[0], "no-softirq-page_pool01", F_INV, F_TSC, F_TI, line=len(noise) // 2 + 1)


# -- hwtests import-log ------------------------------------------------------------------------

def _cli(*args: str, cwd: Path):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "hwtests.cli", "import-log", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def test_import_log_dry_run_json(tmp_path):
    p = _cli(str(DATA / "oot-dmesg.log"), str(DATA / "mail-quoted.txt"), "--kernel-build", "b1", "--dry-run",
             "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    objs = [json.loads(ln) for ln in p.stdout.splitlines()]          # JSON Lines: one object per file
    assert [o["file"] for o in objs] == [str(DATA / "oot-dmesg.log"), str(DATA / "mail-quoted.txt")]
    assert len(objs[0]["records"]) == 9 and len(objs[0]["warnings"]) == 3 and len(objs[1]["records"]) == 6
    fp = objs[0]["records"][6]
    assert fp["type"] == "tasklet_page_pool01_fast_path" and fp["cycles"] == 19
    assert fp["cycles_exact"] == 190054880 / 10000000 and fp["line"] == 14
    assert set(fp) >= {"type", "cycles", "ns", "step", "time_interval", "invoke_count", "tsc_interval",
                       "cycles_exact", "line"}
    assert objs[0]["warnings"][0] == {"line": 6, "reason": "benchmark note",
                                      "text": read("oot-dmesg.log").splitlines()[5]}
    assert not (tmp_path / ".hwtests").exists()                        # dry run: no store


def test_import_log_bad_files_store_nothing(tmp_path):
    (tmp_path / "noise.log").write_text("[ 1.0] usb 1-1: new device\n")
    for bad, msg in (("missing.log", "missing.log: no such file"),
                     ("noise.log", "noise.log: no page_pool benchmark results in it")):
        p = _cli(str(DATA / "oot-dmesg.log"), bad, "--kernel-build", "b1", "--db", str(tmp_path / "r.db"),
                 cwd=tmp_path)
        assert p.returncode == 2
        assert p.stderr.strip().splitlines() == [f"hwtests: error: {msg}"]
        assert p.stdout == ""
    assert not (tmp_path / "r.db").exists()
    (tmp_path / "trunc.log").write_text(read("errors.log").splitlines()[0] + "\n")
    p = _cli("trunc.log", "--kernel-build", "b1", "--dry-run", cwd=tmp_path)
    assert p.returncode == 2 and "1 unreadable result line(s), first at line 1: truncated result" in p.stderr


def test_import_log_indented_and_cut(tmp_path):
    """Indented, quoted and cut results reach the store; the cut one's warning names file and line."""
    from hwtests.store import Store
    db = tmp_path / "r.db"
    p = _cli(str(DATA / "indented-notes.txt"), "--kernel-build", "notes", "--db", str(db), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith("indented-notes.txt: 5 records (5 types), 2 warnings -> run 1 (notes)")
    lines = read("indented-notes.txt").splitlines()
    assert p.stderr.splitlines() == [
        f"{DATA / 'indented-notes.txt'}:7: benchmark note: {lines[6].strip()[:160]}",
        f"{DATA / 'indented-notes.txt'}:20: {tb.TRUNCATED_KEPT}: {lines[19].strip()[:160]}"]
    with Store.open(str(db), create=False) as st:
        df = st.samples(labels=["notes"])
    cyc = {t: v for t, v in df[df.metric == "cycles"][["test", "value"]].itertuples(index=False)}
    want = {f"pagepool/{t}": tsc / inv for t, inv, tsc, _ in INDENTED}
    typ, inv, tsc, ti = FAST_CUT
    want[f"pagepool/{typ}"] = tsc // inv                     # the cut line: printed cycles only
    assert cyc == want
    ns = df[(df.metric == "ns") & (df.test == f"pagepool/{typ}")]
    assert list(ns.value) == [printed_ns(ti, inv)]


def test_import_log_stores_one_run_per_file(tmp_path):
    from hwtests.store import Store
    two_loads = tmp_path / "two-loads.kmsg"
    two_loads.write_text(read("hwt_pp_bench-612-tcg.kmsg") + read("hwt_pp_bench-612-tcg.kmsg"))
    db = tmp_path / "r.db"
    p = _cli(str(DATA / "upstream.kmsg"), str(two_loads), "--kernel-build", "net-next", "--host", "dut1",
             "--db", str(db), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0].endswith("3 records (3 types), 3 warnings -> run 1 (net-next)")
    with Store.open(str(db)) as st:
        runs = st.runs()
        assert [(r.label, r.source) for r in runs] == [("net-next", "import")] * 2
        df = st.samples(labels=["net-next"])
        assert len(df) == 3 * 2 + 14 * 2
        fp = df[(df.test == "pagepool/no-softirq-page_pool01") & (df.metric == "cycles")]
        vals = list(fp.value)
        assert 140020915 / 10000000 in vals and vals.count(121917937 / 200000) == 2
        assert sorted(fp[fp.value == 121917937 / 200000].repetition) == [0, 1]   # two loads in one file
        ns = df[(df.test == "pagepool/no-softirq-page_pool01") & (df.metric == "ns")]
        assert 54926007 / 10000000 in list(ns.value)
        assert set(df.better) == {"lower"} and set(df.host) == {"dut1"}
        assert set(df[df.metric == "cycles"].unit) == {"cycles"} and set(df[df.metric == "ns"].unit) == {"ns"}
