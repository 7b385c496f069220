"""`hwtests import-log`: page_pool benchmark results from kernel logs or mails into the results store.

    hwtests import-log dmesg-before.txt mail.txt --kernel-build net-next-0107 [--host dut1]
                       [--db URL] [--dry-run] [--json]

Every file is read with `hwtests.timebench.parse` (dmesg, dmesg -T, /dev/kmsg,
journalctl -k, mail-quoted, indented and wrapped, the selftest script's
output; a result cut after its printed ns is kept short with a warning). Each
file becomes one run (source "import") under the label: tests
`pagepool/<type>`, metrics `cycles` (tsc_interval/invoke count when the line
has them, else the printed cycles) and `ns` (time_interval/invoke count, else
the printed ns), lower is better. When a type occurs several times in a file
(several loads in one log), the occurrences are repetitions 0, 1, ...

All files are read and parsed before anything is stored: a file that does not
exist or holds no result is one error line naming it, exit 2, and nothing
is stored.

Output: one line per file (records, types, warnings; each warning on stderr as
`FILE:LINE: reason: text`). With `--json`, JSON Lines on stdout: one object per
file, `{"file", "records": [...], "warnings": [...]}` (+ `"run_id"` when stored),
records with the keys of `hwtests.timebench.Record`, warnings with `line`,
`text`, `reason`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
from pathlib import Path

from . import timebench
from .errors import EXIT_OK, InputError
from .inventory import check_label


def add_command(sub) -> None:
    p = sub.add_parser(
        "import-log", help="import page_pool benchmark results from kernel logs or mails",
        description="Parse time_bench result lines (bench_page_pool, bench_page_pool_simple, hwt_pp_bench and "
                    "their family) from kernel logs, /dev/kmsg dumps or mail archives, and store each file as "
                    "one run under a kernel build label.",
        epilog="--json prints JSON Lines: one object per file. exit codes: 0 ok; 2 a file is missing or "
               "has no results (nothing is stored then).")
    p.add_argument("files", nargs="+", metavar="FILE", help="log files (- for stdin)")
    p.add_argument("--kernel-build", required=True, metavar="LABEL", help="the kernel build these results belong to")
    p.add_argument("--host", metavar="NAME", help="the host the benchmark ran on")
    p.add_argument("--db", metavar="URL", help="results store: SQLite path (default .hwtests/results.db) or postgresql://...")
    p.add_argument("--dry-run", action="store_true", help="parse and show, store nothing")
    p.add_argument("--json", action="store_true", help="JSON Lines on stdout, one object per file")
    p.set_defaults(func=run)


def _read(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a directory, not a log file") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {exc.strerror}") from None


def repetitions(records: list[timebench.Record]) -> list[int]:
    """The n-th record of a type is repetition n (pure)."""
    seen: dict[str, int] = {}
    out = []
    for r in records:
        out.append(seen.get(r.type, 0))
        seen[r.type] = out[-1] + 1
    return out


def run(args: argparse.Namespace) -> int:
    check_label(args.kernel_build)
    parsed: list[tuple[str, bytes, timebench.ParseResult]] = []
    for name in args.files:
        data = _read(name)
        res = timebench.parse(data.decode("utf-8", errors="replace"))
        if not res.records:
            why = f"; {len(res.warnings)} unreadable result line(s), first at line {res.warnings[0].line}: " \
                  f"{res.warnings[0].reason}" if res.warnings else ""
            raise InputError(f"{name}: no page_pool benchmark results in it{why}")
        parsed.append((name, data, res))

    store = None
    if not args.dry_run:
        from .store import HostInfo, Run, Store
        from .pagepool import to_samples
        store = Store.open(args.db)
    for name, data, res in parsed:
        obj = {"file": name, "records": [r.to_dict() for r in res.records],
               "warnings": [w.to_dict() for w in res.warnings]}
        if store is not None:
            run_ = Run(label=args.kernel_build, pair=None, controller=socket.gethostname(), inventory_hash=None,
                       source="import",
                       hosts=[HostInfo(role="rx", name=args.host)] if args.host else [],
                       artifacts={f"log:{os.path.basename(name) if name != '-' else 'stdin'}":
                                  hashlib.sha256(data).hexdigest()})
            rid = store.begin_run(run_)
            samples = []
            for rec, rep in zip(res.records, repetitions(res.records)):
                samples += to_samples([rec], repetition=rep, host=args.host, line=rec.line,
                                      module=rec.module)
            try:
                store.add_samples(rid, samples)
            except BaseException:
                store.finish_run(rid, status="failed")
                raise
            store.finish_run(rid)
            obj["run_id"] = rid
        if args.json:
            print(json.dumps(obj, sort_keys=False))
        else:
            types = len(dict.fromkeys(r.type for r in res.records))
            stored = f" -> run {obj['run_id']} ({args.kernel_build})" if "run_id" in obj else " (dry run)"
            print(f"{name}: {len(res.records)} records ({types} types), {len(res.warnings)} warnings{stored}")
        if not args.json:
            for w in res.warnings:
                print(f"{name}:{w.line}: {w.reason}: {w.text.strip()[:160]}", file=sys.stderr)
    return EXIT_OK
