"""Write the results: results.json, results.md (a table) and ratios.png (a chart)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.suite import Result
from bench.tools import ensure_matplotlib


def write_json(path: Path, meta: Mapping[str, object], results: Sequence[Result]) -> None:
    """Everything measured, every run's time and peak RSS included."""
    doc = {"meta": dict(meta), "results": [r.as_dict() for r in results]}
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def _fmt_value(result: Result, side_value: float | None, status: str) -> str:
    if side_value is None:
        return "n/a" if status in ("ok", "no peer") else status
    if result.kind == "time":
        return f"{side_value:.3f} s"
    if result.kind == "size":
        return f"{side_value / (1 << 20):.2f} MiB"
    if result.work_unit == "bytes":
        return f"{side_value / (1 << 20):.0f} MiB/s"
    return f"{side_value:,.0f} {result.work_unit}/s"


def _fmt_mib(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def _load_line(meta: Mapping[str, object]) -> str:
    """The load averages, which say how noisy the machine was."""
    load = meta.get("load_average")
    if not isinstance(load, Mapping):
        return ""
    parts = [f"{k.replace('_', ' ')} {'/'.join(map(str, v)) if isinstance(v, list) else v}"
             for k, v in load.items()]
    return "Load average (1/5/15 min): " + ", ".join(parts) + "."


def markdown(meta: Mapping[str, object], results: Sequence[Result]) -> str:
    """The report table: one row per measurement and corpus."""
    versions = meta.get("peer_versions", {})
    peers = ", ".join(f"{k} {v}" for k, v in versions.items()) if isinstance(versions, Mapping) else ""
    lines = [
        f"# sealtree benchmarks ({meta.get('mode', '')} mode)",
        "",
        (f"Machine: {meta.get('machine', '')}. Peers: {peers}. "
         f"Runs per measurement: {meta.get('repeats', '')} (median shown). "
         f"Page cache: {meta.get('cache', '')}. {_load_line(meta)}"),
        "",
        ("Ratio = sealtree / peer: of median times for times (lower is better), of rates "
         "for throughputs (higher is better)."),
        "",
        ("| measurement | corpus | sealtree | peer | ratio | target | met? | peak MiB sealtree / peer "
         "| read from disk MiB sealtree / peer |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if meta.get("error"):
        lines[2:2] = [f"**FAILED**: `{str(meta['error']).splitlines()[0]}`", ""]
    for r in results:
        peer = f"{_fmt_value(r, r.value(r.peer), r.peer.status)}"
        if r.peer_name:
            peer += f" ({r.peer_name})"
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}"
        met = {True: "yes", False: "**no**", None: ""}[r.met]
        lines.append(
            f"| {r.name} | {r.corpus} | {_fmt_value(r, r.value(r.sealtree), r.sealtree.status)} | "
            f"{peer} | {ratio} | {r.target or ''} | {met} | "
            f"{_fmt_mib(r.sealtree.peak_rss_mib)} / {_fmt_mib(r.peer.peak_rss_mib)} | "
            f"{_fmt_mib(r.sealtree.read_mib)} / {_fmt_mib(r.peer.read_mib)} |")
    noted = [(r, note) for r in results for note in r.notes]
    if noted:
        lines += ["", *[f"- {r.name} ({r.corpus}): {note}" for r, note in noted]]
    corpora = meta.get("corpora")
    if isinstance(corpora, Mapping):
        lines += ["", "| corpus | entries | regular files | symlinks | directories | bytes |",
                  "|---|---|---|---|---|---|"]
        for name, stats in corpora.items():
            lines.append(f"| {name} | {stats['entries']:,} | {stats['regular_files']:,} | "
                         f"{stats['symlinks']:,} | {stats['directories']:,} | {stats['total_bytes']:,} |")
    notes = meta.get("notes")
    if isinstance(notes, Sequence) and notes:
        lines += ["", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def chart(path: Path, results: Sequence[Result]) -> None:
    """A horizontal bar chart of every ratio, normalised so that right of 1 means "sealtree wins".

    Time ratios are inverted (peer time / sealtree time) so that every bar
    reads as a speed-up; each target is drawn as a tick on its bar.
    """
    ensure_matplotlib()
    import matplotlib.pyplot as plt

    rows = [(r, r.ratio) for r in results if r.ratio is not None]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.45 * max(1, len(rows))))
    if not rows:
        ax.text(0.5, 0.5, "no ratios yet (sealtree commands not available)", ha="center", va="center")
        ax.set_axis_off()
    else:
        _bars(ax, [(f"{r.name} ({r.corpus})", _speedup(r, ratio), r.met,
                    None if r.target is None else _speedup(r, r.target.value)) for r, ratio in rows])
        ax.set_title("sealtree vs peers (green: target met, red: missed, black tick: target)")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # long row labels: keep the title whole
    plt.close(fig)


def _speedup(result: Result, ratio: float) -> float:
    """A ratio as a speed-up over the peer: rates as they are, times inverted."""
    return ratio if result.kind == "rate" else 1 / ratio


def _bars(ax: Any, rows: Sequence[tuple[str, float, bool | None, float | None]]) -> None:
    """Draw (label, speed-up, met, target speed-up) rows as bars growing from parity."""
    import matplotlib.ticker

    labels = [row[0] for row in rows]
    speedups = [row[1] for row in rows]
    colours = ["#888888" if met is None else "#2a9d3a" if met else "#d1495b" for _, _, met, _ in rows]
    ys = list(range(len(rows)))
    # Bars grow from 1 (parity): right means sealtree is faster, left slower.
    ax.barh(ys, [x - 1 for x in speedups], left=1, color=colours)
    for y, x in zip(ys, speedups, strict=True):
        ax.annotate(f"{x:.2f}x", (x, y), xytext=(4 if x >= 1 else -4, 0),
                    textcoords="offset points", va="center", ha="left" if x >= 1 else "right")
    goals = [(y, row[3]) for y, row in zip(ys, rows, strict=True) if row[3] is not None]
    for y, goal in goals:
        ax.plot([goal, goal], [y - 0.4, y + 0.4], color="black", linewidth=2)
    ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_yticks(ys, labels)
    ax.invert_yaxis()
    ax.set_xscale("log")
    low = min([*speedups, *(g for _, g in goals)]) / 1.6
    high = max([*speedups, 2.0, *(g for _, g in goals)]) * 1.6
    ax.set_xlim(low, high)
    ticks = [t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100) if low <= t <= high]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("speed relative to peer: peer time / sealtree time (>1: sealtree faster)")


def write_all(out: Path, meta: Mapping[str, object], results: Sequence[Result]) -> list[Path]:
    """Write the three outputs into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.md", out / "ratios.png"]
    write_json(paths[0], meta, results)
    paths[1].write_text(markdown(meta, results))
    chart(paths[2], results)
    return paths
