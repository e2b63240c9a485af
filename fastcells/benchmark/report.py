"""Writes the results of a benchmark run: results.json, results.csv, report.md and PNG plots.

A result row (one per case and provider) holds the case's fields (group, cell, mode, dtype, hidden,
batch, steps, input_size, layers, and its display name "case"), "provider", "time_s" (median seconds per call,
None when the provider failed), "rounds_s", "peak_bytes", "x_vs_torch" / "x_vs_naive" (torch.nn's or
the naive loop's time over this one: > 1 is faster), "iqr_s", "spread", "x_vs_torch_range" and
"unstable" (stability.py), and "error" when the provider could not run.
"""

import csv
import json
import os

from . import providers as providers_mod
from . import stability

CSV_FIELDS = ["device_name", "date", "git", "fastcells", "torch", "cuda", "cudnn", "triton", "group",
              "cell", "mode", "dtype", "steps", "layers", "batch", "input_size", "hidden", "provider", "time_ms",
              "peak_mib", "x_vs_torch", "x_vs_naive", "spread", "x_vs_torch_low", "x_vs_torch_high",
              "unstable", "error"]


def format_time(seconds):
    if seconds is None:
        return "failed"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.3f} s"


def format_bytes(count):
    if count is None:
        return "–"
    return f"{count / 2**10:.1f} KiB" if count < 2**20 else f"{count / 2**20:.2f} MiB"


def _format_spread(spread):
    return "–" if spread is None else f"{spread:.0%}"


def format_ratio(ratio):
    return "–" if ratio is None else f"{ratio:.2f}x"


def _unstable(text, row):
    """``text`` marked when ``row``'s rounds spread too much to support it."""
    return f"{text} (unstable)" if row.get("unstable") else text


def _stability_note(meta, rows):
    """The report's sentences on the machine's load and the unstable rows."""
    measured = [row for row in rows if row.get("rounds_s")]
    unstable = sum(bool(row.get("unstable")) for row in measured)
    busy = meta.get("machine_busy")
    text = (f"{unstable} of {len(measured)} rows are marked unstable: the spread of their rounds "
            f"leaves their ratio to torch.nn uncertain by more than a factor {stability.MAX_RATIO_RANGE}, "
            "or on both sides of 1x (torch.nn's own row: its quartiles more than "
            f"{stability.MAX_TIME_RANGE - 1:.0%} apart); each row's spread is in the table at the end.")
    if busy is not None:
        text += f" Other processes kept {busy:.0%} of the cores busy just before the run."
    return text


def providers_in(rows):
    """Provider names in first-seen order (torch.nn, fused backends, naive loop, compiled loop)."""
    return list(dict.fromkeys(row["provider"] for row in rows))


def write_json(path, meta, rows):
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": rows}, f, indent=1)


def write_csv(path, meta, rows):
    versions = meta["versions"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({
                "device_name": meta["device_name"], "date": meta["date"], "git": meta["git"],
                **{key: versions.get(key) for key in ("fastcells", "torch", "cuda", "cudnn", "triton")},
                **{key: row[key] for key in ("group", "cell", "mode", "dtype", "steps", "batch",
                                             "input_size", "hidden", "provider")},
                "layers": row.get("layers", 1),
                "time_ms": None if row["time_s"] is None else row["time_s"] * 1e3,
                "peak_mib": None if row["peak_bytes"] is None else row["peak_bytes"] / 2**20,
                "x_vs_torch": row["x_vs_torch"], "x_vs_naive": row["x_vs_naive"],
                "spread": row.get("spread"),
                "x_vs_torch_low": (row.get("x_vs_torch_range") or [None])[0],
                "x_vs_torch_high": (row.get("x_vs_torch_range") or [None, None])[1],
                "unstable": row.get("unstable"), "error": row.get("error"),
            })


def _table(header, lines):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return out


def _case_label(row):
    kind = f"{row['cell'].upper()}Cell" if row["steps"] == 0 else f"{row['cell'].upper()} T={row['steps']}"
    layers = f" L={row['layers']}" if row.get("layers", 1) > 1 else ""
    return f"{kind}{layers} B={row['batch']} H={row['hidden']} {row['mode']} {row['dtype']}"


def _isa_note(meta):
    """The instruction-set caps the run was made under (environment.isa_settings), as lines."""
    settings = meta.get("isa_settings") or {}
    if not settings:
        return []
    caps = ", ".join(f"{name}={value}" for name, value in settings.items())
    return [f"Instruction sets capped for this run by environment variables: {caps} (the title names what "
            "fastcells' kernels and torch's ran).", ""]


def markdown(meta, rows):
    """The report as Markdown text: how it was measured, then one table per case group."""
    versions = meta["versions"]
    lines = [f"# fastcells benchmark: {meta['device_name']}", "",
             f"{meta['date']} · fastcells {versions['fastcells']} (git {meta['git']}) · torch "
             f"{versions['torch']} · CUDA {versions['cuda']} · cuDNN {versions['cudnn']} · Triton "
             f"{versions['triton']}", "",
             *_isa_note(meta),
             f"Medians of {meta['rounds']} interleaved rounds of about {meta['budget_s']} s each per "
             f"provider. `x torch.nn`: torch.nn's time over the provider's (> 1 is faster); "
             f"`{providers_mod.NAIVE}` is the naive loop (plain PyTorch ops per step)."
             + (" Quick run: a few points per group." if meta["quick"] else ""), "",
             _stability_note(meta, rows), ""]
    providers = providers_in(rows)
    others = [p for p in providers if p != providers_mod.TORCH]
    fused = [p for p in others if p not in (providers_mod.NAIVE, providers_mod.NAIVE_COMPILED)]
    groups = list(dict.fromkeys(row["group"] for row in rows))
    for group in groups:
        group_rows = [row for row in rows if row["group"] == group]
        by_case = {}
        for row in group_rows:
            by_case.setdefault(_case_label(row), {})[row["provider"]] = row
        header = (["case"] + providers + [f"x torch.nn ({p})" for p in others]
                  + [f"x naive ({p})" for p in fused])
        table = []
        for label, cells in by_case.items():
            torch_row = cells.get(providers_mod.TORCH, {})
            table.append([label]
                         + [(_unstable(format_time(cells[p]["time_s"]), torch_row) if p == providers_mod.TORCH
                             else format_time(cells[p]["time_s"])) if p in cells else "" for p in providers]
                         + [_unstable(format_ratio(cells[p]["x_vs_torch"]), cells[p]) if p in cells else ""
                            for p in others]
                         + [format_ratio(cells[p]["x_vs_naive"]) if p in cells else "" for p in fused])
        lines += [f"## {group}", ""] + _table(header, table) + [""]
    lines += ["## Peak memory of one call", "",
              "Bytes allocated at once during one call above what was allocated before it (CUDA: the "
              "caching allocator's peak; CPU: torch's allocations, from the profiler's memory events).",
              ""]
    by_case = {}
    for row in rows:
        by_case.setdefault(f"{row['group']}: {_case_label(row)}", {})[row["provider"]] = row
    table = [[label] + [format_bytes(cells.get(p, {}).get("peak_bytes")) for p in providers]
             for label, cells in by_case.items()]
    lines += _table(["case"] + providers, table) + [""]
    lines += ["## Spread of the rounds", "",
              "Interquartile range of each provider's round times over their median.", ""]
    table = [[label] + [_format_spread(cells.get(p, {}).get("spread")) for p in providers]
             for label, cells in by_case.items()]
    lines += _table(["case"] + providers, table) + [""]
    failures = [row for row in rows if row.get("error")]
    if failures:
        lines += ["## Providers that could not run a case", ""]
        lines += [f"- {row['provider']} on {row['case']}: {row['error']}" for row in failures]
        lines.append("")
    return "\n".join(lines)


def _sweep_plot(path, rows, group, axis, title):
    """Time vs ``axis`` ("hidden" or "batch") per provider, one panel per (cell, mode); log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in rows if row["group"] == group and row["time_s"] is not None]
    panels = list(dict.fromkeys((row["cell"], row["mode"], row["dtype"]) for row in rows))
    if not panels:
        return None
    cols = 2
    fig_rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(fig_rows, cols, figsize=(5.5 * cols, 3.6 * fig_rows), squeeze=False)
    for ax, (cell, mode, dtype) in zip(axes.flat, panels):
        panel_rows = [r for r in rows if (r["cell"], r["mode"], r["dtype"]) == (cell, mode, dtype)]
        for provider in providers_in(panel_rows):
            points = sorted((r[axis], r["time_s"] * 1e3) for r in panel_rows if r["provider"] == provider)
            ax.plot(*zip(*points), marker="o", label=provider)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(axis)
        ax.set_ylabel("ms per call")
        ax.set_title(f"{cell.upper()} {mode} {dtype}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _speedup_plot(path, rows, title):
    """Horizontal bars: each fused backend's speedup over torch.nn per case; a line at 1x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fused = [p for p in providers_in(rows) if p not in (providers_mod.TORCH, providers_mod.NAIVE,
                                                          providers_mod.NAIVE_COMPILED)]
    cases = list(dict.fromkeys(row["case"] for row in rows))
    if not fused or not cases:
        return None
    height = 0.8 / len(fused)
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(cases) * max(1, len(fused)) + 1.5))
    for index, provider in enumerate(fused):
        ratios = {row["case"]: row["x_vs_torch"] for row in rows if row["provider"] == provider}
        ax.barh([i + index * height for i in range(len(cases))],
                [ratios.get(case) or 0 for case in cases], height=height, label=provider)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(cases))])
    ax.set_yticklabels(cases, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speedup over torch.nn (torch.nn time / fastcells time)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_all(out_dir, meta, rows):
    """Writes every output into ``out_dir``; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, name) for name in ("results.json", "results.csv", "report.md")]
    write_json(paths[0], meta, rows)
    write_csv(paths[1], meta, rows)
    with open(paths[2], "w") as f:
        f.write(markdown(meta, rows) + "\n")
    title = f"{meta['device_name']}, {meta['date'][:10]}"
    plots = [_sweep_plot(os.path.join(out_dir, "hidden.png"), rows, "hidden", "hidden",
                         f"time vs hidden size: {title}"),
             _sweep_plot(os.path.join(out_dir, "batch.png"), rows, "batch", "batch",
                         f"time vs batch size: {title}"),
             _speedup_plot(os.path.join(out_dir, "speedup.png"), rows, f"speedup over torch.nn: {title}")]
    return paths + [p for p in plots if p]
