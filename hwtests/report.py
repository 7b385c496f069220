"""`hwtests report`: one self-contained HTML file comparing kernel builds.

The page has no external scripts, styles, fonts or images and no JavaScript: it
opens from disk, offline, and can be mailed. Figures are matplotlib SVG inlined
in the page; point clouds inside them are rasterized (a PNG inside the SVG) so a
figure stays small whatever the number of samples, while axes and text stay
vector.

Scale: everything is aggregated with pandas/numpy from one frame of samples,
loaded once (label by label, strings made categorical) and handed to the gate
through a caching wrapper so it is not read twice; a figure draws at most `MAX_POINTS` points per build (evenly spaced order
statistics of the build's samples, min and max included, so the shape and the
outliers survive and the output is deterministic). The raw samples are embedded
as a CSV download (a percent-encoded `data:` URI, no JavaScript) up to
`CSV_MAX_BYTES` (16 MiB, about 120k samples); above that the page embeds the
per-run summary CSV (count, median, min, max per run, test and metric) and names
the command that exports every row (`hwtests report ... --csv FILE`): 1M samples
are ~130 MB of CSV, a page browsers open slowly and mail servers refuse, and a
gzip+base64 payload could not be downloaded as CSV without JavaScript.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import io
import math
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from . import countercmp, identity
from .errors import HwtestsError, InputError

MAX_POINTS = 2000          # plotted points per build and metric
CSV_MAX_BYTES = 16 << 20   # raw samples CSV embedded in the page up to this size (~120k rows)
PARALLEL_MIN_FIGURES = 4    # from this many figures they are drawn in worker processes
FIGURE_WORKERS = 2
HISTORY_MIN_RUNS = 5       # runs of a test on a pair before a history figure is drawn
HISTORY_MAX_RUNS = 200     # most recent runs considered for history figures
HISTORY_SAMPLE_BUDGET = 100_000   # raw samples of other builds read for history figures (newest first)
ENV_VALUE_MAX = 160        # characters of an environment value shown in a table cell

# Display precision per metric (decimals) and display names.
DECIMALS = {"cycles": 2, "ns": 2, "gbps": 2, "cpu_per_gb": 3, "link_pct": 1, "ceiling_pct": 1}
METRIC_ORDER = {"cycles": 0, "ns": 1, "gbps": 2, "cpu_per_gb": 3, "link_pct": 4, "ceiling_pct": 5}
# Shares shown by what they are a share of (the unit alone, %, would not say).
METRIC_LABEL = {"link_pct": "% of link", "ceiling_pct": "% of TCP ceiling"}
# Tests whose figures are not what their family's name suggests, labelled wherever the name is shown:
# io_uring zcrx without a NIC (ZCRX_REG_NODEV) copies every byte, so it is never a zero-copy figure.
TEST_LABELS = {"linerate/zcrx-nodev": "copy fallback, functional"}
VERDICT_ORDER = {"regression": 0, "incomparable": 1, "inconclusive": 2, "improvement": 3, "unchanged": 4, "none": 5}

# Build colors (colorblind-safe, Okabe-Ito); the baseline is always the first.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


def add_command(sub) -> None:
    p = sub.add_parser(
        "report", help="write the HTML regression report of kernel builds",
        description="Write one self-contained HTML file (no external resources, opens offline) comparing "
        "kernel builds from the results store: verdict summary, sample and history figures, environment "
        "diff, skipped tests, raw samples as CSV.",
        epilog="example: hwtests report --builds base,patched --out reports/patch.html")
    p.add_argument("--db", metavar="URL", help="results store (SQLite path or postgresql://...)")
    p.add_argument("--builds", metavar="A,B,...", help="kernel build labels, comma-separated (default: all)")
    p.add_argument("--baseline", metavar="LABEL", help="build the others are compared to (default: the first)")
    p.add_argument("--out", required=True, metavar="FILE", help="HTML file to write (e.g. reports/patch.html)")
    p.add_argument("--title", metavar="TEXT", help="page title")
    p.add_argument("--note", metavar="TEXT", help="note shown in a banner at the top (e.g. 'emulated numbers')")
    p.add_argument("--csv", metavar="FILE", help="also write every raw sample of the builds to this CSV file")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    from .store import Store

    builds = [b.strip() for b in args.builds.split(",") if b.strip()] if args.builds else None
    with Store.open(args.db, create=False) as store:
        path = write_report(store, Path(args.out), builds=builds, baseline=args.baseline, title=args.title,
                            note=args.note, csv_path=Path(args.csv) if args.csv else None, db=args.db)
    print(f"report: {path.resolve()}")
    return 0


# -- data ----------------------------------------------------------------------------------

_COLUMN_ALIASES = {
    "label": ("label", "build", "kernel_build"),
    "run_id": ("run_id", "run", "runid"),
    "pair": ("pair",),
    "test": ("test",),
    "metric": ("metric",),
    "value": ("value",),
    "unit": ("unit",),
    "better": ("better",),
    "repetition": ("repetition", "rep"),
    "boot_id": ("boot_id",),
    "host": ("host",),
    "started": ("started", "run_started", "time"),
}


def _normalize(df):
    """Rename the store's columns to the names used here; add missing ones."""
    import pandas as pd

    cols = {}
    for want, names in _COLUMN_ALIASES.items():
        for n in names:
            if n in df.columns:
                cols[n] = want
                break
    df = df.rename(columns=cols)
    for want in _COLUMN_ALIASES:
        if want not in df.columns:
            df[want] = pd.NA if want not in ("unit", "better") else ""
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    if df["value"].isna().any():
        df = df[df["value"].notna()]
    for c in ("label", "pair", "test", "metric", "unit", "better", "host", "boot_id"):
        if not isinstance(df[c].dtype, pd.CategoricalDtype):   # factorize strings once, group fast
            df[c] = df[c].astype("category")
    return df


def _load(store, labels):
    """`store.samples()` of `labels`, one label at a time, strings made categorical as each arrives.

    The store returns one Python string object per row and column; converting each
    label's frame before asking for the next keeps the peak near one label's worth.
    """
    import pandas as pd

    frames = [_normalize(store.samples(labels=[lb])) for lb in labels]
    if not frames:
        return _normalize(store.samples(labels=[]))
    if len(frames) == 1:
        return frames[0]
    cats = {c: pd.api.types.union_categoricals([f[c] for f in frames]).categories
            for c in ("label", "pair", "test", "metric", "unit", "better", "host", "boot_id")}
    for f in frames:
        for c, cat in cats.items():
            f[c] = f[c].cat.set_categories(cat)
    return pd.concat(frames, ignore_index=True)


class _CachedStore:
    """The store, but `samples()` of the report's builds answered from the frame already loaded.

    Handed to `compare.compare_labels` so the gate does not read a million rows a
    second time. Other calls go to the real store.
    """

    def __init__(self, store, df, labels):
        self._store, self._df, self._labels = store, df, set(labels)

    def __getattr__(self, name):
        return getattr(self._store, name)

    def samples(self, labels=None, test_glob=None, metric=None, pair=None):
        import fnmatch

        want = [labels] if isinstance(labels, str) else (list(labels) if labels is not None else None)
        if want is None or not set(want) <= self._labels:
            return self._store.samples(labels=labels, test_glob=test_glob, metric=metric, pair=pair)
        df = self._df
        mask = df["label"].isin(want)
        if metric is not None:
            mask &= df["metric"] == metric
        if pair is not None:
            mask &= df["pair"] == pair
        out = df[mask]
        if test_glob is not None:
            tests = [t for t in out["test"].cat.categories if fnmatch.fnmatchcase(t, test_glob)]
            out = out[out["test"].isin(tests)]
        out = out.copy()
        for c in out.columns:      # plain object columns, as the store returns them
            if isinstance(out[c].dtype, __import__("pandas").CategoricalDtype):
                out[c] = out[c].astype(object)
        return out.reset_index(drop=True)


def _get(obj, name, default=None):
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """A nested dict as {"a.b": "value"}; lists joined with ", "."""
    if isinstance(d, dict):
        out: dict[str, str] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(d, (list, tuple, set)):
        return {prefix: ", ".join(str(x) for x in d)}
    return {prefix: "" if d is None else str(d)}


def _fmt_time(t) -> str:
    if t is None or (isinstance(t, float) and math.isnan(t)):
        return ""
    if isinstance(t, (int, float)):
        t = _dt.datetime.fromtimestamp(t, tz=_dt.timezone.utc)
    if isinstance(t, str):
        try:
            t = _dt.datetime.fromisoformat(t)
        except ValueError:
            return t
    try:
        if t.tzinfo is not None:
            t = t.astimezone(_dt.timezone.utc)
        return t.strftime("%Y-%m-%d %H:%M UTC" if t.tzinfo is not None else "%Y-%m-%d %H:%M")
    except AttributeError:
        return str(t)


def _to_datetime(t):
    import pandas as pd

    if t is None:
        return pd.NaT
    if isinstance(t, (int, float)):
        return pd.to_datetime(t, unit="s", utc=True)
    try:
        ts = pd.to_datetime(t, utc=True)
    except (ValueError, TypeError):
        return pd.NaT
    return ts


# -- formatting ------------------------------------------------------------------------------

def fmt_value(v, metric: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    d = DECIMALS.get(metric)
    if d is None:
        a = abs(v)
        d = 2 if a >= 10 or a == 0 else max(2, 3 - int(math.floor(math.log10(a))) - 1)
        d = min(d, 6)
    return f"{v:,.{d}f}".replace(",", "\u2009") if abs(v) >= 10000 else f"{v:.{d}f}"


def fmt_p(p) -> str:
    if p is None or (isinstance(p, float) and not math.isfinite(p)):
        return "–"
    if p < 1e-16:
        return "<1e-16"
    if p >= 0.01:
        return f"{p:.2g}" if p < 0.1 else f"{p:.2f}"
    m, e = f"{p:.1e}".split("e")
    return f"{m}e{int(e)}"


def fmt_pct(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:+.2f}%"


def fmt_shift(x, metric: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    s = fmt_value(abs(x), metric)
    return ("+" if x > 0 else "−" if x < 0 else "±") + s


def break_points(name: str) -> list[str]:
    """A name cut after each `/`, `_` and `-`: the places where the summary may wrap it (pure)."""
    return [part for part in re.split(r"(?<=[/_-])", str(name)) if part]


def fmt_int(n) -> str:
    try:
        return f"{int(n):,}".replace(",", "\u2009")
    except (TypeError, ValueError):
        return "–"


def _verdict_class(v) -> str:
    s = str(v or "").lower()
    if "regress" in s or s in ("fail", "failed", "worse", "slower"):
        return "regression"
    if "improv" in s or s in ("better", "faster"):
        return "improvement"
    if "compar" in s or s in ("x", "mismatch"):
        return "incomparable"
    if "inconcl" in s or "more" in s or "noisy" in s or s in ("unknown", "unsure"):
        return "inconclusive"
    if s in ("", "none", "n/a"):
        return "none"
    return "unchanged"


VERDICT_LABEL = {"regression": "REGRESSION", "improvement": "improvement", "inconclusive": "inconclusive",
                 "unchanged": "no change", "incomparable": "not comparable", "none": "–"}


# -- statistics for display -----------------------------------------------------------------

def median_ci(sorted_vals, conf: float = 0.95) -> tuple[float, float] | None:
    """Distribution-free CI of the median from order statistics (binomial); None if n < 6.

    The lower bound is the j-th smallest value with P(Binom(n, 1/2) < j) <= (1-conf)/2,
    exact up to n = 1000 and by the normal approximation above.
    """
    n = len(sorted_vals)
    if n < 6:
        return None
    a = (1 - conf) / 2
    if n <= 1000:
        cdf, j = 0.0, 0
        while True:                      # smallest j with P(X <= j) > a; the bound is value j (1-based)
            p = math.comb(n, j) / 2.0 ** n
            if cdf + p > a:
                break
            cdf += p
            j += 1
        j = max(j, 1)
    else:
        j = max(1, int(math.floor(n / 2 - 1.959964 * math.sqrt(n) / 2)) + 1)
    k = n - j + 1
    return float(sorted_vals[j - 1]), float(sorted_vals[k - 1])


def thin_sorted(sorted_vals, cap: int = MAX_POINTS):
    """At most `cap` evenly spaced order statistics (min and max included)."""
    import numpy as np

    n = len(sorted_vals)
    if n <= cap:
        return sorted_vals
    idx = np.unique(np.linspace(0, n - 1, cap).round().astype(np.int64))
    return sorted_vals[idx]


# -- figures --------------------------------------------------------------------------------

_MPL_READY = False


def _mpl():
    global _MPL_READY
    import matplotlib

    if not _MPL_READY:
        matplotlib.use("Agg", force=True)
        matplotlib.rcParams.update({
            "svg.fonttype": "none",            # text stays text: small, selectable; no embedded font
            "font.family": "sans-serif",
            "font.size": 9,
            "axes.titlesize": 10,
            "axes.labelsize": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.color": "#e3e3e3",
            "grid.linewidth": 0.6,
            "axes.axisbelow": True,
            "savefig.dpi": 110,
            "path.simplify": True,
        })
        _MPL_READY = True
    import matplotlib.pyplot as plt

    return plt


_SVG_HEAD = re.compile(r"^.*?(<svg\b)", re.S)
_SVG_META = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_SVG_XMLNS = re.compile(r'\sxmlns(?::xlink)?="[^"]*"')
_SVG_SIZE = re.compile(r'(<svg\b[^>]*?)\s(width|height)="[^"]*"')


def _svg(fig, key: str) -> str:
    """The figure as inline SVG (no XML prolog, no fixed size, ids unique per figure)."""
    import matplotlib

    plt = _mpl()
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": hashlib.sha1(key.encode()).hexdigest()[:12]}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    s = _SVG_HEAD.sub(r"\1", buf.getvalue(), count=1)
    s = _SVG_SIZE.sub(r"\1", s, count=1)
    s = _SVG_SIZE.sub(r"\1", s, count=1)
    # inline in HTML the namespaces are implied; the RDF metadata block only names namespaces
    s = _SVG_META.sub("", s, count=1)
    s = _SVG_XMLNS.sub("", s[:400]) + s[400:]
    return s.replace("<svg ", '<svg class="fig" role="img" ', 1)


def _metric_title(metric: str, unit: str) -> str:
    names = {"cycles": "cycles per element", "ns": "ns per element", "gbps": "throughput",
             "cpu_per_gb": "CPU per GB", **METRIC_LABEL}
    base = names.get(metric, metric)
    return base if metric in METRIC_LABEL else f"{base} [{unit}]" if unit else base


def line_rate_rows(medians: dict[tuple[str, str], float], builds: list[str]) -> list[dict]:
    """Per build, throughput beside % of link and % of TCP ceiling (medians; pure).

    `medians`: (metric, build) -> median. The ceiling itself, as % of the link, is the ratio
    of the two shares (each sample's link_pct / ceiling_pct is the ceiling at its MTU).
    Builds with neither share are left out."""
    rows = []
    for b in builds:
        link, share = medians.get(("link_pct", b)), medians.get(("ceiling_pct", b))
        if link is None and share is None:
            continue
        rows.append({"build": b, "gbps": medians.get(("gbps", b)), "link_pct": link, "ceiling_pct": share,
                     "ceiling": 100.0 * link / share if link is not None and share else None})
    return rows


def samples_figure(test: str, metrics: list[dict], builds: list[str], colors: dict[str, str]) -> str:
    """One row of panels (one per metric): per build, jittered samples, median and 95% CI."""
    import numpy as np

    plt = _mpl()
    nb = len(builds)
    ncol = len(metrics)
    left = 0.2 + 0.068 * max([len(_short(b, 26)) for b in builds] or [4])
    width = 11.0 if ncol > 1 else 8.0
    height = 0.62 + 0.5 * nb
    fig, axes = plt.subplots(1, ncol, figsize=(width, height), squeeze=False, sharey=True)
    _fixed_layout(fig, width, height, left=left, right=0.15, top=0.3, bottom=0.32, wspace=0.3, ncol=ncol)
    for ax, m in zip(axes[0], metrics):
        rng = np.random.default_rng(1234)          # deterministic jitter
        for i, b in enumerate(builds):
            y = nb - 1 - i
            d = m["values"].get(b)
            if d is None or len(d["pts"]) == 0:
                ax.text(0.5, y, "no samples", transform=ax.get_yaxis_transform(), ha="center", va="center",
                        color="#888", fontsize=8)
                continue
            pts = d["pts"]
            jit = rng.uniform(-0.28, 0.28, len(pts))
            ax.scatter(pts, y + jit, s=9 if len(pts) < 300 else 4, alpha=0.55 if len(pts) < 300 else 0.3,
                       color=colors[b], linewidths=0, rasterized=len(pts) > 150, zorder=2)
            med, ci = d["median"], d["ci"]
            if ci:
                ax.plot([ci[0], ci[1]], [y, y], color="#111", lw=2.2, solid_capstyle="butt", zorder=4)
            ax.plot([med, med], [y - 0.36, y + 0.36], color="#111", lw=1.6, zorder=5)
        ax.set_yticks(range(nb))
        if ax is axes[0][0]:
            ax.set_yticklabels([_short(b, 26) for b in reversed(builds)])
        else:
            ax.tick_params(axis="y", left=False)
        ax.set_ylim(-0.6, nb - 0.4)
        ax.grid(axis="y", visible=False)
        ax.set_title(_metric_title(m["metric"], m["unit"]) +
                     ("  (lower is better)" if m["better"] == "lower" else
                      "  (higher is better)" if m["better"] == "higher" else ""), loc="left")
        fmt = ax.xaxis.get_major_formatter()
        if hasattr(fmt, "set_useOffset"):
            fmt.set_useOffset(False)
    return _svg(fig, f"s:{test}")


def _draw(job: tuple[str, tuple]) -> str:
    name, args = job
    return {"samples_figure": samples_figure, "history_figure": history_figure}[name](*args)


class _Painter:
    """Draws figure jobs, in two child processes when a CPU is idle (else here, one by one).

    The children are plain `python -c` processes (no multiprocessing: its spawn mode
    re-imports the caller's __main__). They are started first, so their imports
    (matplotlib; the change-point library for the history worker) overlap loading
    the samples; they get pickled jobs holding only the thinned points on stdin,
    draw while this process runs the gate, and answer pickled SVGs on stdout.
    Anything a child could not draw is drawn here.
    """

    ROLES = ("samples", "history")

    def __init__(self, parallel: bool):
        self.jobs: list[tuple[str, tuple]] = []
        self.procs: list = []
        if parallel and FIGURE_WORKERS > 1 and _spare_cpus() >= 1.0:
            self._spawn()

    def _spawn(self) -> None:
        import subprocess

        pkg_root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, MPLBACKEND="Agg",
                   PYTHONPATH=pkg_root + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""))
        try:
            for role in self.ROLES:
                p = subprocess.Popen([sys.executable, "-c", f"import hwtests.report as r; r._worker_main({role!r})"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=env)
                self.procs.append({"p": p, "idx": [], "box": {}, "threads": []})
        except OSError:
            self.abort()

    def add(self, name: str, args: tuple) -> None:
        self.jobs.append((name, args))

    def start(self) -> None:
        """Hand the jobs to the children (history jobs to the history worker, the rest to the other)."""
        import pickle
        import threading

        if not self.procs:
            return
        hist = [i for i, j in enumerate(self.jobs) if j[0] == "history_figure"]
        rest = [i for i, j in enumerate(self.jobs) if j[0] != "history_figure"]
        if not hist:                      # nothing for the history worker: share the rest
            rest, hist = rest[0::2], rest[1::2]
        for w, idx in zip(self.procs, (rest, hist)):
            w["idx"] = idx
            payload = pickle.dumps([self.jobs[i] for i in idx], protocol=pickle.HIGHEST_PROTOCOL)

            def feed(p=w["p"], payload=payload):
                try:
                    p.stdin.write(payload)
                    p.stdin.close()
                except OSError:
                    pass

            def drain(p=w["p"], box=w["box"]):
                box["out"] = p.stdout.read()

            w["threads"] = [threading.Thread(target=feed, daemon=True), threading.Thread(target=drain, daemon=True)]
            for t in w["threads"]:
                t.start()

    def finish(self) -> dict[tuple[str, str], Any]:
        import pickle

        out: dict[tuple[str, str], Any] = {}
        done: set[int] = set()
        for w in self.procs:
            for t in w["threads"]:
                t.join()
            w["p"].wait()
            if w["p"].returncode == 0 and w["box"].get("out"):
                try:
                    res = pickle.loads(w["box"]["out"])
                except Exception:  # noqa: BLE001 - redrawn below
                    continue
                for i, fig in zip(w["idx"], res):
                    out[(self.jobs[i][0], self.jobs[i][1][0])] = fig
                    done.add(i)
        self.procs = []
        for i, job in enumerate(self.jobs):      # serial, or whatever a child could not draw
            if i not in done:
                out[(job[0], job[1][0])] = _draw(job)
        return out

    def abort(self) -> None:
        """End the children (on an error before `finish`)."""
        for w in self.procs:
            p = w["p"]
            if p.poll() is None:
                p.kill()
            p.wait()
            for f in (p.stdin, p.stdout):
                try:
                    f.close()
                except (OSError, ValueError):
                    pass
        self.procs = []


def _spare_cpus() -> float:
    """CPUs this process may use minus the 1-minute load: child processes only pay off on an idle core."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return n - load


def _worker_main(role: str = "samples") -> None:
    import pickle

    _mpl()
    if role == "history":
        try:
            from . import history   # noqa: F401 - warm the change-point import while waiting for jobs
            import ruptures  # noqa: F401
        except ImportError:
            pass
    jobs = pickle.load(sys.stdin.buffer)
    res = [_draw(j) for j in jobs]
    sys.stdout.buffer.write(pickle.dumps(res, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()


def _fixed_layout(fig, width, height, left, right, top, bottom, wspace, ncol):
    """Margins in inches (no tight_layout: it costs one extra draw per figure)."""
    inner = width - left - right - wspace * (ncol - 1)
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height,
                        wspace=(wspace / (inner / ncol)) if ncol > 1 else 0.2)


def _change_points(panels: list[dict]) -> list[str]:
    """Fill each series' "cps" from `hwtests.history.change_points`; return sentences for the page."""
    notes: list[str] = []
    try:
        from .history import change_points
    except ImportError:
        change_points = None
        notes.append("change-point detection unavailable (hwtests.history missing)")
    for p in panels:
        for s in p["series"]:
            s["cps"] = []
            if change_points is None:
                continue
            y, m = s["y"], s["metric"]
            try:
                found = change_points(list(map(float, y)), metric=m)
            except TypeError:
                found = change_points(list(map(float, y)))
            except Exception as exc:  # noqa: BLE001 - history is optional
                notes.append(f"change points of {m} on {s['pair']}: {exc}")
                continue
            for cp in found:
                i = int(_get(cp, "index"))
                ch = float(_get(cp, "change_pct"))
                bad = (ch > 0) if s["better"] == "lower" else (ch < 0) if s["better"] == "higher" else True
                label = s["labels"][i] if 0 <= i < len(s["labels"]) else ""
                s["cps"].append({"index": i, "change_pct": ch, "bad": bad, "label": label})
                notes.append(f"{s['pair']}, {m}: step {ch:+.2f}% from build {label}" + (" (worse)" if bad else " (better)"))
    return notes


def history_figure(test: str, panels: list[dict], colors: dict[str, str]) -> dict:
    """Per-run medians in run order (oldest first), one series per pair, change points marked.

    Runs are evenly spaced (an A/B session of hours and months of nightlies read the same);
    runs of the report's builds take their build color, other builds are grey.
    """
    import numpy as np
    from matplotlib.lines import Line2D

    notes = _change_points(panels)
    plt = _mpl()
    ncol = len(panels)
    width = 11.0 if ncol > 1 else 8.0
    height = 2.7
    fig, axes = plt.subplots(1, ncol, figsize=(width, height), squeeze=False)
    _fixed_layout(fig, width, height, left=0.62, right=0.4, top=0.3, bottom=0.62, wspace=0.95, ncol=ncol)
    markers = "osD^v<>"
    seen: dict[str, str] = {}
    for ax, p in zip(axes[0], panels):
        npts = 0
        for si, s in enumerate(p["series"]):
            y = np.asarray(s["y"], dtype=float)
            x = np.arange(len(y))
            npts = max(npts, len(y))
            pc = [colors.get(lb, "#9aa0a6") for lb in s["labels"]]
            for lb in s["labels"]:
                seen.setdefault(lb if lb in colors else "other builds", colors.get(lb, "#9aa0a6"))
            labs = np.asarray(s["labels"], dtype=object)
            own = np.isin(labs, list(colors))
            if (~own).sum() > 1:      # other builds (e.g. nightlies): one grey line through them
                ax.plot(x[~own], y[~own], lw=0.7, color="#c4c7cc", zorder=2)
            for lb in dict.fromkeys(labs[own]):   # each build of the report: its own line
                sel = labs == lb
                ax.plot(x[sel], y[sel], lw=0.8, color=colors[lb], alpha=0.45, zorder=2)
            ax.scatter(x, y, s=14 if len(y) < 80 else 7, marker=markers[si % len(markers)], c=pc, zorder=3,
                       linewidths=0)
            bounds = [0] + [c["index"] for c in s["cps"] if 0 < c["index"] < len(y)] + [len(y)]
            for a, b in zip(bounds[:-1], bounds[1:]):
                if b - a >= 1 and len(bounds) > 2:
                    seg = float(np.median(y[a:b]))
                    ax.plot([a - 0.3, b - 0.7], [seg, seg], color="#5f6368", lw=1.6, alpha=0.55, zorder=1)
            for cp in s["cps"]:
                i = cp["index"]
                if 0 < i < len(y):
                    col = "#c62828" if cp["bad"] else "#2e7d32"
                    ax.axvline(i - 0.5, color=col, ls="--", lw=1.0, zorder=1)
                    ax.annotate(f"{cp['change_pct']:+.1f}% at {_short(cp['label'], 22)}", (i - 0.5, 1.0),
                                xycoords=("data", "axes fraction"), xytext=(3, -1), textcoords="offset points",
                                va="top", fontsize=7.5, color=col)
        ticks = p["ticks"]
        if ticks:
            ax.set_xticks([t[0] for t in ticks])
            ax.set_xticklabels([t[1] for t in ticks], fontsize=7.5)
        ax.set_xlim(-0.8, npts - 0.2)
        fmt = ax.yaxis.get_major_formatter()
        if hasattr(fmt, "set_useOffset"):
            fmt.set_useOffset(False)
        ax.grid(axis="x", visible=False)
        ax.set_title(_metric_title(p["metric"], p["unit"]) + " — median per run", loc="left")
    handles = [Line2D([], [], ls="", marker="o", color=c, label=_short(k, 28)) for k, c in seen.items()]
    pairs = [s["pair"] for s in panels[0]["series"]]
    if len(pairs) > 1:
        handles += [Line2D([], [], ls="", marker=markers[i % len(markers)], color="#5f6368", label=str(pr))
                    for i, pr in enumerate(pairs)]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False, fontsize=7.5,
                   bbox_to_anchor=(0.5, 0.0))
    return {"svg": _svg(fig, f"h:{test}"), "notes": notes}


def _midpoint(a, b):
    try:
        return a + (b - a) / 2
    except TypeError:
        return b


def _short(s: str, n: int) -> str:
    s = str(s)
    return s if len(s) <= n else s[: n - 1] + "…"


# -- CSV -----------------------------------------------------------------------------------

_UNSAFE = re.compile(rb"[^A-Za-z0-9,.\-_:/+=;@!$()*~]")


def data_uri(data: bytes, mime: str = "text/csv;charset=utf-8") -> str:
    """A percent-encoded data: URI (smaller than base64 for CSV: only a few bytes need escaping)."""
    enc = _UNSAFE.sub(lambda m: b"%%%02X" % m[0][0], data)
    return f"data:{mime}," + enc.decode("ascii")


CSV_COLUMNS = ["label", "pair", "run_id", "test", "metric", "unit", "better", "repetition", "value", "boot_id", "host"]


def samples_csv(df) -> bytes:
    cols = [c for c in CSV_COLUMNS if c in df.columns]
    return df[cols].to_csv(index=False, lineterminator="\n", float_format="%.6g").encode()


# -- the report ------------------------------------------------------------------------------

@dataclass
class Ctx:
    title: str
    generated: str
    builds: list[str]
    baseline: str | None
    candidates: list[str]
    banners: list[dict] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    summary: list[dict] = field(default_factory=list)
    gate: dict = field(default_factory=dict)
    tests: list[dict] = field(default_factory=list)
    env: dict = field(default_factory=dict)
    outcomes: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)
    csv: dict = field(default_factory=dict)
    run_groups: list[dict] = field(default_factory=list)
    pairs_in_summary: bool = False
    gate_env_diff: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    colors: dict = field(default_factory=dict)
    n_samples: int = 0
    command: str = ""
    csv_raw: bytes | None = None        # every raw sample, when a CSV file was asked for


def write_report(store, out_path, builds: list[str] | None = None, baseline: str | None = None,
                 title: str | None = None, note: str | None = None, csv_path: Path | None = None,
                 db: str | None = None, thresholds: dict | None = None,
                 comparisons: dict[str, list] | None = None) -> Path:
    """Render the report of `builds` (default: every label) to `out_path`; return the path.

    `comparisons` (candidate label -> the gate's comparisons against `baseline`) are shown as
    given, so a page agrees with the verdicts of the caller (`hwtests ab`'s sequential gate).

    The page (and the CSV, if asked for) appear whole or not at all: both are written to
    temporary files first and renamed into place only once both are written.
    """
    out_path = _out_file(out_path, "--out")
    csv_path = _out_file(csv_path, "--csv") if csv_path is not None else None
    ctx = build_context(store, builds=builds, baseline=baseline, title=title, note=note, db=db,
                        csv_path=csv_path, thresholds=thresholds, comparisons=comparisons)
    files = [(out_path, render(ctx).encode("utf-8"))]
    if csv_path is not None:
        files.append((csv_path, ctx.csv_raw or b""))
    tmps: list[Path] = []
    path = out_path
    try:
        for path, data in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmps.append(path.with_name(f".{path.name}.{os.getpid()}.tmp"))
            tmps[-1].write_bytes(data)
        for (path, _), tmp in zip(files, tmps):
            tmp.replace(path)
    except OSError as exc:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise InputError(f"{path}: cannot write: {exc.strerror}") from None
    return out_path


def _out_file(path, option: str) -> Path:
    """A file to write, checked before any work is done on it."""
    p = Path(path)
    if not p.name or p.is_dir() or str(path).endswith("/"):
        raise InputError(f"{option} {path}: a directory; give a file name (e.g. reports/patch.html)")
    return p


def build_context(store, builds=None, baseline=None, title=None, note=None, db=None, csv_path=None,
                  thresholds=None, comparisons=None) -> Ctx:
    labels = list(store.labels())
    if not labels:
        raise InputError("the results store has no runs yet: nothing to report (hwtests run stores results)")
    if builds:
        unknown = [b for b in builds if b not in labels]
        if unknown:
            raise InputError(f"no results for build(s) {', '.join(unknown)} in the store "
                             f"(known: {', '.join(labels) or 'none'})")
    else:
        builds = labels
    builds = list(dict.fromkeys(builds))
    if baseline and baseline not in builds:
        if baseline not in labels:
            raise InputError(f"no results for baseline build {baseline} in the store")
        builds = [baseline] + builds
    if not baseline and len(builds) > 1:
        baseline = builds[0]
    if baseline:
        builds = [baseline] + [b for b in builds if b != baseline]
    candidates = [b for b in builds if b != baseline]
    colors = {b: PALETTE[i % len(PALETTE)] for i, b in enumerate(builds)}

    ctx = Ctx(title=title or (f"{baseline} vs {', '.join(candidates)}" if baseline else
                              ", ".join(builds) or "hwtests report"),
              generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              builds=builds, baseline=baseline, candidates=candidates, colors=colors)
    from .store import redact_url

    # shown on the page to regenerate it: never with the store's password
    cmd = ["hwtests", "report"] + (["--db", redact_url(db)] if db else []) + \
        (["--builds", ",".join(builds)] if builds else []) + (["--baseline", baseline] if baseline else [])
    ctx.command = shlex.join(cmd)
    painter = _Painter(parallel=True)     # started first: its imports overlap loading the samples
    try:
        return _fill(ctx, store, painter, note=note, csv_path=csv_path, thresholds=thresholds,
                     comparisons=comparisons)
    except BaseException:
        painter.abort()
        raise


def _fill(ctx: Ctx, store, painter: "_Painter", note=None, csv_path=None, thresholds=None,
          comparisons=None) -> Ctx:
    import numpy as np
    import pandas as pd

    builds, baseline, candidates, colors = ctx.builds, ctx.baseline, ctx.candidates, ctx.colors
    _phase("start")
    df = _load(store, builds)
    _phase(f"load {len(df)} samples")
    gate_store = _CachedStore(store, df, builds)
    ctx.n_samples = int(len(df))
    runs = list(store.runs(labels=builds)) if builds else list(store.runs())
    run_info = {_get(r, "id"): r for r in runs}

    # -- banners: emulation / virtualization, caller's note
    _phase("banners: emulation / virtualization, caller's note")
    emu = _emulation(runs)
    if emu:
        ctx.banners.append({"kind": "emulated", "text": emu})
    if note:
        ctx.banners.append({"kind": "note", "text": note})
    ctx.problems += identity.conflicts(runs)      # one label, several kernels: its figures mix builds

    # -- per-build statistics
    _phase('per-build statistics')
    g = df.groupby(["test", "metric", "label"], sort=False, observed=True)["value"]
    stats = g.agg(["count", "median"])
    if len(df):
        q = g.quantile([0.25, 0.75]).unstack()
        stats["iqr"] = q[0.75] - q[0.25]
    else:
        stats["iqr"] = []
    units = df.groupby(["test", "metric"], sort=False, observed=True)[["unit", "better"]].first()

    # -- figures: drawn (in worker processes when large) while the gate runs below
    _phase('figures: drawn (in worker processes when large) while the gate runs below')
    tm_keys = sorted({(t, m) for t, m in units.index},
                     key=lambda k: (k[0], METRIC_ORDER.get(k[1], 99), k[1]))
    hist = _history(store, df, runs, builds)
    by_tm = {k: v for k, v in df.groupby(["test", "metric"], sort=False, observed=True)} if len(df) else {}
    for t in dict.fromkeys(t for t, _ in tm_keys):
        metrics = []
        notes = []
        thinned: set[int] = set()
        for (tt, m) in tm_keys:
            if tt != t:
                continue
            sub = by_tm[(t, m)]
            unit, better = units.loc[(t, m)]
            vals = {}
            for b, s in sub.groupby("label", sort=False, observed=True)["value"]:
                v = np.sort(s.to_numpy(dtype=float))
                if len(v):
                    vals[str(b)] = {"pts": thin_sorted(v), "median": float(np.median(v)), "ci": median_ci(v),
                                    "n": len(v)}
            big = sorted({d["n"] for d in vals.values() if d["n"] > MAX_POINTS})
            if big:
                thinned.update(big)
            metrics.append({"metric": m, "unit": unit, "better": better, "values": vals})
        if thinned:
            notes.append(f"Each build shows at most {fmt_int(MAX_POINTS)} points (evenly spaced order statistics, "
                         f"min and max included) of its {' / '.join(fmt_int(n) for n in sorted(thinned))} samples; "
                         "medians and confidence intervals use every sample.")
        shown_builds = [b for b in builds if any(b in mm["values"] for mm in metrics)]
        painter.add("samples_figure", (t, metrics, shown_builds, colors))
        if t in hist:
            painter.add("history_figure", (t, hist[t]["panels"], colors))
        ctx.tests.append({"name": t, "anchor": _anchor(t), "verdict": "none", "figure": None, "notes": notes,
                          "history": None, "history_notes": hist[t]["notes"] if t in hist else [], "rows": [],
                          "line_rate": []})
    del by_tm
    painter.start()

    # -- comparisons from the gate
    _phase('comparisons from the gate')
    comps: dict[tuple[str, str, str], list] = {}
    if baseline and candidates:
        try:
            from . import compare
        except ImportError as exc:      # pragma: no cover - only while compare.py is missing
            compare = None
            ctx.problems.append(f"no verdicts: {exc}")
        if compare is not None:
            for c in candidates:
                try:
                    given = (comparisons or {}).get(c)
                    for cmp in (given if given is not None
                                else compare.compare_labels(gate_store, baseline, c, thresholds=thresholds)):
                        comps.setdefault((cmp.test, cmp.metric, c), []).append(cmp)
                except Exception as exc:  # the report still shows numbers without verdicts
                    ctx.problems.append(f"{baseline} vs {c}: no verdicts: {exc}")
    ctx.gate = _gate_params(thresholds)

    # -- summary rows
    _phase('summary rows')
    def st(t, m, b):
        try:
            r = stats.loc[(t, m, b)]
            return {"n": int(r["count"]), "median": float(r["median"]), "iqr": float(r["iqr"])}
        except KeyError:
            return None

    rows = []
    for t, m in tm_keys:
        unit, better = units.loc[(t, m)]
        base_st = st(t, m, baseline) if baseline else None
        for c in (candidates or builds):
            cst = st(t, m, c)
            base_row = {"test": t, "anchor": _anchor(t), "metric": m, "unit": unit or "", "better": better or "",
                        "build": c, "pair": None, "base": base_st, "cand": cst, "note": "", "threshold": ""}
            for cmp in comps.get((t, m, c), []):
                row = dict(base_row, pair=getattr(cmp, "pair", None))
                row.update(verdict=_verdict_class(cmp.verdict), verdict_raw=str(cmp.verdict),
                           change=_num(cmp.change_pct), shift=_num(cmp.shift), p=_num(cmp.p_value),
                           more_runs=cmp.more_runs, env_diff=cmp.env_diff, note=getattr(cmp, "note", "") or "",
                           threshold=_describe_threshold(getattr(cmp, "threshold", None)))
                # the gate's own numbers (per pair) are authoritative for the table
                row["base"] = {"median": _num(cmp.median_base), "iqr": _num(cmp.iqr_base), "n": cmp.n_base} \
                    if cmp.n_base else None
                row["cand"] = {"median": _num(cmp.median_cand), "iqr": _num(cmp.iqr_cand), "n": cmp.n_cand} \
                    if cmp.n_cand else None
                row["severity"] = _severity(row)
                rows.append(row)
            if (t, m, c) in comps:
                continue
            row = dict(base_row)
            change = None
            if base_st and cst and base_st["median"]:
                change = (cst["median"] - base_st["median"]) / abs(base_st["median"]) * 100
            row.update(verdict="none", verdict_raw="", change=change, shift=None, p=None, more_runs=None,
                       env_diff=None)
            row["severity"] = _severity(row)
            rows.append(row)
    ctx.pairs_in_summary = len({r["pair"] for r in rows if r["pair"]}) > 1
    seen_diff: dict[str, None] = {}
    for r in rows:
        d = r.get("env_diff") or []
        for item in ([d] if isinstance(d, str) else d):
            seen_diff.setdefault(str(item), None)
    ctx.gate_env_diff = list(seen_diff)[:12] + ([f"(+{len(seen_diff) - 12} more)"] if len(seen_diff) > 12 else [])
    def order(r):
        v = VERDICT_ORDER.get(r["verdict"], 9)
        sev = -round(r["severity"], 1) if r["verdict"] in ("regression", "improvement") else 0.0
        if r["verdict"] == "none" and r["change"] is not None:   # no gate: worst change first
            sev = -(r["change"] if r["better"] != "higher" else -r["change"])
        return (v, sev, r["test"], METRIC_ORDER.get(r["metric"], 99), r["metric"], builds.index(r["build"]),
                str(r["pair"] or ""))
    rows.sort(key=order)
    ctx.summary = rows
    cnt: dict[str, int] = {}
    for r in rows:
        cnt[r["verdict"]] = cnt.get(r["verdict"], 0) + 1
    ctx.counts = cnt

    # -- tests in verdict order, with their figures
    _phase('tests in verdict order, with their figures')
    verdict_of_test: dict[str, str] = {}
    for r in rows:
        v = verdict_of_test.get(r["test"])
        if v is None or VERDICT_ORDER[r["verdict"]] < VERDICT_ORDER[v]:
            verdict_of_test[r["test"]] = r["verdict"]
    _phase("wait for figures")
    figs = painter.finish()
    for tt in ctx.tests:
        tt["verdict"] = verdict_of_test.get(tt["name"], "none")
        tt["rows"] = [r for r in rows if r["test"] == tt["name"]]
        tt["figure"] = figs.get(("samples_figure", tt["name"]))
        h = figs.get(("history_figure", tt["name"]))
        if h:
            tt["history"] = h["svg"]
            tt["history_notes"] = tt["history_notes"] + h["notes"]
        med = {(m, b): float(stats.loc[(tt["name"], m, b)]["median"])
               for m in ("gbps", "link_pct", "ceiling_pct") for b in builds if (tt["name"], m, b) in stats.index}
        tt["line_rate"] = line_rate_rows(med, builds)
    ctx.tests.sort(key=lambda tt: (VERDICT_ORDER.get(tt["verdict"], 9), tt["name"]))
    _counters(ctx, store, builds, baseline)

    # -- environment diff, outcomes, runs
    _phase('environment diff, outcomes, runs')
    ctx.env = _env_diff(runs, builds)
    ctx.outcomes = _outcomes(store, builds, run_info)
    ctx.runs = _runs_table(runs, df)
    ctx.run_groups = _runs_by_build(runs, builds)

    # -- CSV
    _phase('CSV')
    summary_df = (df.groupby(["label", "pair", "run_id", "test", "metric", "unit"], sort=True, dropna=False, observed=True)["value"]
                  .agg(["count", "median", "min", "max"]).reset_index()) if len(df) else pd.DataFrame()
    csum = summary_df.to_csv(index=False, lineterminator="\n", float_format="%.6g").encode() if len(df) else b""
    ctx.csv = {"rows": len(df), "cap_bytes": CSV_MAX_BYTES, "raw_uri": None, "raw_bytes": 0,
               "summary_uri": data_uri(csum) if csum else None,
               "summary_rows": len(summary_df), "summary_bytes": len(csum),
               "export_cmd": ctx.command + " --out report.html --csv samples.csv"}
    if len(df):
        # estimate first: never build a CSV of a million rows only to throw it away
        est = len(samples_csv(df.iloc[:2000])) / min(len(df), 2000) * len(df)
        embed = est <= CSV_MAX_BYTES * 1.2
        raw = samples_csv(df) if (embed or csv_path is not None) else None
        if csv_path is not None:
            ctx.csv_raw = raw           # written next to the page by write_report
        ctx.csv["raw_bytes"] = len(raw) if raw is not None else int(est)
        if raw is not None and len(raw) <= CSV_MAX_BYTES:
            ctx.csv["raw_uri"] = data_uri(raw)
    _phase('end')
    return ctx


def _counters(ctx: Ctx, store, builds, baseline) -> None:
    """Kernel counters per test, builds side by side (they explain a verdict, never make one)."""
    try:
        countercmp.attach_to_tests(store, ctx.tests, builds, baseline)
    except HwtestsError as exc:
        ctx.problems.append(f"no counters: {exc}")
        for tt in ctx.tests:
            tt.setdefault("counters", [])


_T0: list[float] = []


def _phase(name: str) -> None:
    """With HWTESTS_REPORT_TIMING=1, print the time since the previous phase to stderr."""
    if not os.environ.get("HWTESTS_REPORT_TIMING"):
        return
    import time

    now = time.perf_counter()
    if _T0 and name != "start":
        print(f"report: {now - _T0[-1]:6.2f} s  (until: {name})", file=sys.stderr)
    _T0[:] = [now]


def _num(x):
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _severity(r) -> float:
    c = r.get("change")
    return abs(c) if c is not None else 0.0


def _anchor(s: str) -> str:
    return "t-" + re.sub(r"[^A-Za-z0-9_-]+", "-", s).strip("-")


def _emulation(runs) -> str | None:
    """A sentence when any run's hosts were emulated (QEMU TCG) or virtualized.

    Looks at each host's env: `virt`/`accel`/`virtualization` ("tcg", "kvm", ...), the
    CPUID `hypervisor` flag (True or a vendor), and a `cpu_model` naming QEMU TCG.
    """
    tcg: set[str] = set()
    virt: dict[str, set[str]] = {}
    for r in runs:
        for h in _get(r, "hosts", []) or []:
            name = str(_get(h, "name", "?"))
            for k, v in _flatten(_get(h, "env", {}) or {}).items():
                key = k.lower().rsplit(".", 1)[-1]
                val = str(v).strip()
                low = val.lower()
                if low in ("", "none", "no", "false", "0", "bare-metal", "bare metal", "metal", "null"):
                    continue
                if key in ("virt", "virtualization", "accel", "hypervisor", "hypervisor_vendor"):
                    if "tcg" in low:
                        tcg.add(name)
                    else:
                        virt.setdefault("hypervisor" if low == "true" else f"{key} {val}", set()).add(name)
                elif key in ("cpu_model", "model", "model_name") and "tcg" in low:
                    tcg.add(name)
    if tcg:
        return (f"Emulated numbers: {', '.join(sorted(tcg))} ran under QEMU TCG (software CPU emulation). Cycles, "
                "ns and Gbit/s measure the emulator, not hardware: compare builds measured the same way, never "
                "quote them as absolute figures.")
    if virt:
        what = "; ".join(f"{k} on {', '.join(sorted(v))}" for k, v in sorted(virt.items()))
        return (f"Virtualized hosts: {what}. Numbers include hypervisor effects; compare only with runs "
                "measured the same way.")
    return None


def _gate_params(thresholds=None) -> dict:
    """The gate's rule and per-metric parameters, as `hwtests.gate` states them."""
    try:
        from . import gate
    except ImportError:
        return {"items": [], "doc": "hwtests.gate is not available: no verdicts."}
    doc = (gate.__doc__ or "").strip().split("\n\n")[0]
    items = []
    try:
        th = gate.build_thresholds(thresholds, ()) if hasattr(gate, "build_thresholds") else gate.DEFAULT_THRESHOLDS
    except Exception:  # noqa: BLE001 - description only
        th = getattr(gate, "DEFAULT_THRESHOLDS", {})
    for m, t in sorted(th.items(), key=lambda kv: METRIC_ORDER.get(kv[0], 99)):
        items.append((m, _describe_threshold(t)))
    if hasattr(gate, "GENERIC_THRESHOLD"):
        items.append(("other", _describe_threshold(gate.GENERIC_THRESHOLD)))
    if hasattr(gate, "MIN_RUNS") and hasattr(gate, "MAX_RUNS"):
        items.append(("runs", f"at least {gate.MIN_RUNS} per side to test; more-runs estimates capped at "
                              f"{gate.MAX_RUNS} per side"))
    return {"items": items, "doc": " ".join(doc.split())}


def _describe_threshold(t) -> str:
    if t is None:
        return ""
    d = getattr(t, "describe", None)
    if callable(d):
        return str(d())
    if isinstance(t, dict):
        return ", ".join(f"{k}={v}" for k, v in t.items())
    return str(t)


def _history(store, df, runs, builds) -> dict:
    """Per test: history panels (per metric, per pair series of per-run medians) with change points."""
    import numpy as np
    import pandas as pd

    try:
        all_runs = list(store.runs())
    except Exception:  # noqa: BLE001
        all_runs = runs
    meta = {}
    for r in all_runs:
        meta[_get(r, "id")] = (_get(r, "label"), _get(r, "pair"), _to_datetime(_get(r, "started")))
    recent = sorted(meta.items(), key=lambda kv: (pd.Timestamp.min.tz_localize("UTC") if pd.isna(kv[1][2])
                                                  else kv[1][2], kv[0] or 0))[-HISTORY_MAX_RUNS:]
    keep = {rid for rid, _ in recent}

    def medians(frame):
        frame = frame[frame["run_id"].isin(keep)]
        return frame.groupby(["test", "metric", "run_id"], sort=False, observed=True).agg(
            value=("value", "median"), unit=("unit", "first"), better=("better", "first")).reset_index()

    parts = [medians(df)]
    # other builds newest first, reduced to per-run medians label by label, within a sample budget
    newest: dict[str, Any] = {}
    for rid, (lb, _, when) in recent:
        if lb not in builds:
            newest[lb] = when
    budget = HISTORY_SAMPLE_BUDGET
    for lb in sorted(newest, key=lambda k: (pd.isna(newest[k]), newest[k] if not pd.isna(newest[k]) else 0),
                     reverse=True):
        if budget <= 0:
            keep -= {rid for rid, m in recent if m[0] == lb}
            continue
        try:
            raw = _normalize(store.samples(labels=[lb]))
        except Exception:  # noqa: BLE001 - history is optional
            continue
        budget -= len(raw)
        for c in ("test", "metric", "unit", "better"):
            raw[c] = raw[c].astype(object)
        parts.append(medians(raw))
        del raw
    for part in parts:
        for c in ("test", "metric", "unit", "better"):
            part[c] = part[c].astype(object)
    med = pd.concat(parts, ignore_index=True)
    if med.empty:
        return {}
    for c in ("test", "metric"):
        med[c] = med[c].astype("category")
    med["pair"] = med["run_id"].map(lambda i: meta.get(i, (None, None, None))[1])
    med["label"] = med["run_id"].map(lambda i: meta.get(i, (None, None, None))[0])
    med["when"] = med["run_id"].map(lambda i: meta.get(i, (None, None, pd.NaT))[2])
    out: dict[str, dict] = {}
    for t, tdf in med.groupby("test", sort=False, observed=True):
        runs_per_pair = tdf.groupby("pair", observed=True)["run_id"].nunique()
        if runs_per_pair.max() < HISTORY_MIN_RUNS:
            continue
        panels = []
        notes = []
        for m, mdf in sorted(tdf.groupby("metric", sort=False, observed=True), key=lambda kv: METRIC_ORDER.get(kv[0], 99)):
            series = []
            ticks: list = []
            for pair, pdf in mdf.groupby("pair", sort=True, observed=True):
                if pdf["run_id"].nunique() < HISTORY_MIN_RUNS:
                    continue
                pdf = pdf.sort_values(["when", "run_id"], na_position="first")
                y = pdf["value"].to_numpy(dtype=float)
                if not ticks:
                    whens = list(pdf["when"])
                    idx = sorted(set(np.linspace(0, len(y) - 1, min(5, len(y))).round().astype(int).tolist()))
                    ticks = [(i, whens[i].strftime("%m-%d %H:%M") if not pd.isna(whens[i]) else str(i)) for i in idx]
                series.append({"pair": pair, "y": y, "labels": [str(lb) for lb in pdf["label"]],
                               "better": str(pdf["better"].iloc[0]), "metric": str(m)})
            if series:
                panels.append({"metric": m, "unit": mdf["unit"].iloc[0], "series": series, "ticks": ticks})
        if panels:
            out[t] = {"panels": panels, "notes": notes}
    return out


_ENV_SKIP = {"boot_id", "id", "started", "name", "role"}
_HOST_FIELDS = ("kernel_release", "proc_version", "config_hash", "cmdline", "nic_driver", "nic_firmware")


def _env_diff(runs, builds) -> dict:
    """Rows (role, key) x builds: distinct values per build; `differs` marks rows that are not equal."""
    vals: dict[tuple[str, str], dict[str, set[str]]] = {}
    boots: dict[tuple[str, str], set[str]] = {}
    hosts_of: dict[str, set[str]] = {}
    for r in runs:
        b = _get(r, "label")
        for h in _get(r, "hosts", []) or []:
            role = str(_get(h, "role", "") or "host")
            hosts_of.setdefault(b, set()).add(f"{role}={_get(h, 'name', '?')}")
            flat = {f: _get(h, f) for f in _HOST_FIELDS}
            flat.update({f"env.{k}": v for k, v in _flatten(_get(h, "env", {}) or {}).items()})
            for k, v in flat.items():
                if k.split(".")[-1] in _ENV_SKIP or v is None or v == "":
                    continue
                vals.setdefault((role, k), {}).setdefault(b, set()).add(str(v))
            if _get(h, "boot_id"):
                boots.setdefault((b, role), set()).add(str(_get(h, "boot_id")))
        arts = _get(r, "artifacts", {}) or {}
        for k, v in arts.items():
            vals.setdefault(("artifact", str(k)), {}).setdefault(b, set()).add(str(v))
    rows = []
    for (role, key), per in vals.items():
        cells = []
        for b in builds:
            s = per.get(b)
            cells.append(None if not s else sorted(s))
        present = [tuple(c) for c in cells if c is not None]
        differs = len(set(present)) > 1 or any(len(c) > 1 for c in present) or \
            (0 < len(present) < len(builds))
        rows.append({"role": role, "key": key.replace("env.", ""), "cells": [_cell(c) for c in cells],
                     "differs": differs})
    # one row for facts equal on both hosts (rx and tx) of every build
    merged: dict[tuple, dict] = {}
    for r in rows:
        k = (r["key"], tuple(c["text"] for c in r["cells"]), r["role"] == "artifact")
        if k in merged:
            merged[k]["roles"].append(r["role"])
        else:
            merged[k] = dict(r, roles=[r["role"]])
    rows = []
    for r in merged.values():
        r["role"] = ", ".join(sorted(r.pop("roles"), key=lambda x: {"rx": 0, "tx": 1}.get(x, 2)))
        rows.append(r)
    for role in sorted({r for (_, r) in boots}):
        cells = [str(len(boots.get((b, role), ()))) for b in builds]
        rows.append({"role": role, "key": "boots (distinct boot ids)", "cells": [_cell([c]) for c in cells],
                     "differs": False})
    prio = {"kernel_release": 0, "proc_version": 1, "config_hash": 2, "cmdline": 3, "nic_driver": 4, "nic_firmware": 5}
    role_prio = {"rx, tx": 0, "rx": 1, "tx": 2, "artifact": 9}
    rows.sort(key=lambda r: (not r["differs"], role_prio.get(r["role"], 5), prio.get(r["key"], 50), r["key"]))
    return {"rows": rows, "n_differ": sum(r["differs"] for r in rows),
            "hosts": {b: ", ".join(sorted(hosts_of.get(b, ()))) for b in builds}}


def _cell(values: list[str] | None) -> dict:
    if values is None:
        return {"text": "(not recorded)", "title": "", "missing": True, "multi": False}
    text = " | ".join(values)
    short = text if len(text) <= ENV_VALUE_MAX else text[: ENV_VALUE_MAX - 1] + "…"
    return {"text": short, "title": text if short != text else "", "missing": False, "multi": len(values) > 1}


def _outcomes(store, builds, run_info) -> list[dict]:
    fn = getattr(store, "outcomes", None)
    if fn is None:
        return []
    try:
        res = fn(labels=builds)
    except TypeError:
        res = fn()
    recs: Iterable
    if hasattr(res, "to_dict"):
        recs = res.to_dict("records")
    else:
        recs = [r if isinstance(r, dict) else getattr(r, "__dict__", {}) for r in res]
    agg: dict[tuple, dict] = {}
    for r in recs:
        rid = r.get("run_id", r.get("run"))
        label = r.get("label") or _get(run_info.get(rid), "label")
        if builds and label not in builds:
            continue
        pair = r.get("pair") or _get(run_info.get(rid), "pair")
        oc = str(r.get("outcome", ""))
        if oc == "passed":
            continue
        k = (str(r.get("test")), oc, label, pair, str(r.get("reason") or ""))
        a = agg.setdefault(k, {"test": k[0], "outcome": oc, "build": label, "pair": pair, "reason": k[4], "count": 0})
        a["count"] += 1
    return sorted(agg.values(), key=lambda a: (a["outcome"] != "failed", a["test"], str(a["build"])))


def _runs_by_build(runs, builds) -> list[dict]:
    """Per build and pair: number of runs, first and last start, inventory hashes, controllers."""
    agg: dict[tuple, dict] = {}
    for r in runs:
        k = (_get(r, "label"), _get(r, "pair"))
        a = agg.setdefault(k, {"build": k[0], "pair": k[1], "n": 0, "times": [], "inv": set(), "ctl": set(),
                               "src": set(), "hosts": set()})
        a["n"] += 1
        if _get(r, "started") is not None:
            a["times"].append(_to_datetime(_get(r, "started")))
        a["inv"].add(str(_get(r, "inventory_hash") or "")[:12])
        a["ctl"].add(str(_get(r, "controller") or ""))
        a["src"].add(str(_get(r, "source") or ""))
        for h in _get(r, "hosts", []) or []:
            a["hosts"].add(f"{_get(h, 'role', '')}={_get(h, 'name', '')}")
    out = []
    for a in agg.values():
        ts = sorted(t for t in a["times"] if not _isna(t))
        out.append({"build": a["build"], "pair": a["pair"], "n": a["n"],
                    "first": _fmt_time(ts[0]) if ts else "", "last": _fmt_time(ts[-1]) if ts else "",
                    "inventory": ", ".join(sorted(a["inv"] - {""})), "controller": ", ".join(sorted(a["ctl"] - {""})),
                    "source": ", ".join(sorted(a["src"] - {""})),
                    "hosts": ", ".join(sorted(a["hosts"], key=lambda x: (not x.startswith("rx"), x)))})
    order = {b: i for i, b in enumerate(builds)}
    out.sort(key=lambda x: (order.get(x["build"], 99), str(x["pair"])))
    return out


def _isna(x) -> bool:
    try:
        import pandas as pd
        return bool(pd.isna(x))
    except (TypeError, ValueError):
        return False


def _runs_table(runs, df) -> list[dict]:
    counts = df.groupby("run_id", observed=True).size().to_dict() if len(df) else {}
    out = []
    for r in runs:
        hosts = _get(r, "hosts", []) or []
        out.append({"id": _get(r, "id"), "build": _get(r, "label"), "pair": _get(r, "pair"),
                    "started": _fmt_time(_get(r, "started")), "controller": _get(r, "controller") or "",
                    "inventory": str(_get(r, "inventory_hash") or "")[:12],
                    "inventory_full": str(_get(r, "inventory_hash") or ""),
                    "source": _get(r, "source") or "", "status": _get(r, "status") or "",
                    "hosts": ", ".join(f"{_get(h, 'role', '')}={_get(h, 'name', '')}" for h in hosts),
                    "kernels": ", ".join(sorted({str(_get(h, 'kernel_release') or '') for h in hosts} - {""})),
                    "samples": int(counts.get(_get(r, "id"), 0))})
    out.sort(key=lambda x: (str(x["started"]), x["id"] or 0))
    return out


# -- HTML ------------------------------------------------------------------------------------

def render(ctx: Ctx) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("hwtests", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
        trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    markup = jinja2.utils.markupsafe.Markup
    env.filters.update(v=fmt_value, p=fmt_p, pct=fmt_pct, shift=fmt_shift, int=fmt_int,
                       wbr=lambda name: markup("<wbr>").join(break_points(name)))
    env.globals.update(VERDICT_LABEL=VERDICT_LABEL, METRIC_LABEL=METRIC_LABEL, TEST_LABELS=TEST_LABELS, Markup=jinja2.utils.markupsafe.Markup)
    tpl = env.get_template("report.html.j2")
    return tpl.render(c=ctx, version=_version())


def _version() -> str:
    try:
        from . import __version__
        return __version__
    except ImportError:  # pragma: no cover
        return "?"


if __name__ == "__main__":  # pragma: no cover
    from .cli import main

    sys.exit(main(["report"] + sys.argv[1:]))
