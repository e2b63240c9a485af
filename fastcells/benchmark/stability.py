"""Whether a benchmark's numbers can be trusted: the spread of each row's rounds, which ratios that
spread leaves uncertain, and how busy the machine was before the run.

A row's spread is the interquartile range of its rounds' times over their median. A ratio against
torch.nn (torch.nn's time over the row's) is taken from the medians; its range from the quartiles
(torch.nn's lower quartile over the row's upper one, to torch.nn's upper over the row's lower). A row is
unstable when that range is more than MAX_RATIO_RANGE wide (its high end over its low end), or when
it reaches both sides of 1x while the median ratio is at least 10% away from it (the rounds do not say
which of the two is faster, though the medians do). torch.nn's own row is unstable when its quartiles
lie further apart than MAX_TIME_RANGE.
"""

import os
import statistics
import time

MAX_RATIO_RANGE = 1.5
MAX_TIME_RANGE = 1.25
BUSY_WARNING = 0.25  # share of the machine's cores other processes used before the run


def quartiles(times):
    """(lower quartile, median, upper quartile) of a row's round times (a single round: all three)."""
    if len(times) < 2:
        return times[0], times[0], times[0]
    low, median, high = statistics.quantiles(times, n=4, method="inclusive")
    return low, median, high


def spread(times):
    """Interquartile range over median (0.1: the middle half of the rounds lies within 10%)."""
    low, median, high = quartiles(times)
    return (high - low) / median if median > 0 else None


def ratio_range(torch_times, times):
    """(low, high) of torch.nn's time over the row's, from the two rows' quartiles."""
    torch_low, _, torch_high = quartiles(torch_times)
    low, _, high = quartiles(times)
    return torch_low / high, torch_high / low


def mark(rows, torch_provider):
    """Adds "iqr_s", "spread", "x_vs_torch_range" (None for torch.nn's own row and where either row
    failed) and "unstable" to every measured row, in place; returns the number of unstable rows."""
    torch_rounds = {row["case"]: row["rounds_s"] for row in rows
                    if row["provider"] == torch_provider and row.get("rounds_s")}
    unstable = 0
    for row in rows:
        times = row.get("rounds_s")
        if not times:
            row.update(iqr_s=None, spread=None, x_vs_torch_range=None, unstable=False)
            continue
        low, median, high = quartiles(times)
        row.update(iqr_s=high - low, spread=spread(times), x_vs_torch_range=None)
        if row["provider"] == torch_provider:
            row["unstable"] = low > 0 and high / low > MAX_TIME_RANGE
        elif row["case"] in torch_rounds:
            ratio_low, ratio_high = ratio_range(torch_rounds[row["case"]], times)
            ratio = row.get("x_vs_torch") or 1.0
            straddles = ratio_low < 1.0 < ratio_high and abs(ratio - 1.0) >= 0.1
            row["x_vs_torch_range"] = [ratio_low, ratio_high]
            row["unstable"] = ratio_high / ratio_low > MAX_RATIO_RANGE or straddles
        else:
            row["unstable"] = False
        unstable += row["unstable"]
    return unstable


def _cpu_ticks():
    """(busy, total) clock ticks of all cores since boot, from /proc/stat (Linux), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(value) for value in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def machine_busy(seconds=0.5):
    """The share of the machine's cores that other processes kept busy over ``seconds`` while this one
    slept (0: idle, 1: every core busy), from /proc/stat; elsewhere the 1-minute load average over the
    core count; None where neither is available."""
    before = _cpu_ticks()
    if before is not None:
        time.sleep(seconds)
        after = _cpu_ticks()
        if after is not None and after[1] > before[1]:
            return (after[0] - before[0]) / (after[1] - before[1])
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return None


def busy_warning(busy):
    """The warning to print before a run on a machine this busy, or None."""
    if busy is None or busy < BUSY_WARNING:
        return None
    return (f"other processes kept {busy:.0%} of this machine's cores busy before the run: timings "
            "will be slower and noisier than on a quiet machine (rows whose rounds spread too much "
            "are marked unstable)")
