"""Writes the dispatch table of one GPU model (fastcells/dispatch_tables/<device slug>.json, read by
fastcells/dispatch.py) from measurements made on it, side by side in one run:

  - bench/persistent_variants.py's variants.json: every path (torch.nn, the per-step loop, each
    persistent variant) per case;
  - a `python -m fastcells bench` results.csv run without FASTCELLS_CUDA_PERSISTENT: torch.nn
    ("torch") and the cuda backend's per-step path ("per-step").

    python bench/dispatch_table.py RESULTS... [--out fastcells/dispatch_tables]

Entries of the same case from several files are merged (a later file's time of a path wins); a file
that does not exist is skipped with a message (bench/gpu.sh passes what a cut-off run may not have
written).
"""

import argparse
import csv
import json
import pathlib
import re

_CSV_PATHS = {"torch.nn": "torch", "cuda": "per-step"}


def _slug(name):
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def from_variants(path):
    """(device name, details, entries) of a persistent_variants.py JSON file."""
    data = json.loads(path.read_text())
    entries = []
    for case in data["results"]:
        # The paths the cuda dispatch can take: not torch.nn in the other dtype, not a variant that
        # did not fit, not the triton backend's (auto does not choose among its paths yet).
        times = {row["provider"]: row["median_ms"] for row in case["rows"]
                 if "did not fit" not in row["provider"] and not row["provider"].startswith(("torch ", "triton"))}
        entries.append({"cell": case["cell"], "dtype": case["dtype"], "mode": case["mode"],
                        "batch": case["B"], "hidden": case["H"], "steps": case["T"], "ms": times})
    return data["device"], {"torch": data["torch"], "cuda": data["cuda"]}, entries


def from_bench_csv(path):
    """(device name, details, entries) of a `fastcells bench` results.csv (CUDA rows only)."""
    rows = [r for r in csv.DictReader(path.open()) if r["provider"] in _CSV_PATHS and r["cuda"]]
    entries = {}
    for r in rows:
        key = (r["cell"], r["dtype"], r["mode"], int(r["batch"]), int(r["hidden"]), int(r["steps"]))
        entry = entries.setdefault(key, dict(zip(("cell", "dtype", "mode", "batch", "hidden", "steps"), key),
                                             ms={}))
        entry["ms"][_CSV_PATHS[r["provider"]]] = float(r["time_ms"])
    first = rows[0]
    return (first["device_name"], {"torch": first["torch"], "cuda": first["cuda"], "date": first["date"]},
            [e for e in entries.values() if "torch" in e["ms"]])


def merge(tables):
    """One table from several (device, details, entries); all from one GPU model."""
    devices = {device for device, _, _ in tables}
    if len(devices) != 1:
        raise SystemExit(f"dispatch_table: results from several GPU models: {sorted(devices)}")
    merged = {}
    for _, _, entries in tables:
        for entry in entries:
            key = tuple(entry[k] for k in ("cell", "dtype", "mode", "batch", "hidden", "steps"))
            merged.setdefault(key, {**entry, "ms": {}})["ms"].update(entry["ms"])
    return devices.pop(), [details for _, details, _ in tables], sorted(merged.values(), key=lambda e: (
        e["cell"], e["dtype"], e["mode"], e["batch"], e["hidden"], e["steps"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=pathlib.Path)
    parser.add_argument("--out", type=pathlib.Path,
                        default=pathlib.Path(__file__).parents[1] / "fastcells" / "dispatch_tables")
    args = parser.parse_args(argv)
    for missing in (p for p in args.results if not p.exists()):
        print(f"dispatch_table: {missing} does not exist, skipped")
    found = [p for p in args.results if p.exists()]
    if not found:
        raise SystemExit("dispatch_table: none of the results exist")
    tables = [from_variants(p) if p.suffix == ".json" else from_bench_csv(p) for p in found]
    device, details, entries = merge(tables)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{_slug(device)}.json"
    out.write_text(json.dumps({"device": device, "measured_with": details,
                               "sources": [str(p) for p in found], "entries": entries}, indent=1) + "\n")
    print(f"dispatch_table: {len(entries)} entries for {device} -> {out}")


if __name__ == "__main__":
    main()
