"""Output of ``python -m fastcells check``: the table as checks complete, the summary line, and the
JUnit XML file."""

import sys
import xml.etree.ElementTree as ET



class Table:
    """Prints the checks as rows as they complete; ``quiet`` prints only failures."""

    COLUMNS = (("backend", 10), ("cell", 9), ("dtype", 9), ("config", 13), ("what", 9),
               ("max abs err", 12), ("max rel err", 12), ("tolerance", 10), ("result", 6))

    def __init__(self, quiet=False, stream=None):
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stdout
        self.header_printed = False
        self.last_skip = None  # a run of skips for one reason prints the reason once

    def _line(self, values):
        return "".join(f"{value:<{width}}" for value, (_, width) in zip(values, self.COLUMNS)).rstrip()

    def row(self, check):
        if self.quiet and check.result != "FAIL":
            return
        if not self.header_printed:
            print(self._line([name for name, _ in self.COLUMNS]), file=self.stream)
            self.header_printed = True
        numbers = [_format(check.max_abs), _format(check.max_rel), _format(check.tolerance)]
        print(self._line([check.backend, check.cell, check.dtype, check.config, check.what, *numbers,
                          check.result]), file=self.stream)
        if check.result == "FAIL" or (check.result == "SKIP" and check.message != self.last_skip):
            print(f"    {check.message}", file=self.stream)
        self.last_skip = check.message if check.result == "SKIP" else None
        self.stream.flush()


def _format(value):
    return "-" if value is None else f"{value:.2e}"


def summary(checks, seconds):
    """'N passed, M failed, K skipped in S s'."""
    counts = {result: sum(c.result == result for c in checks) for result in ("PASS", "FAIL", "SKIP")}
    return (f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped "
            f"in {seconds:.1f} s")


def write_junit(path, checks, seconds, properties):
    """A JUnit XML file: one <testsuite name="fastcells.check"> with one <testcase> per check,
    classname fastcells.check.<backend>.<cell>.<dtype>, name <config>-<what>; <failure> and <skipped>
    carry the message."""
    counts = {
        "tests": str(len(checks)),
        "failures": str(sum(c.result == "FAIL" for c in checks)),
        "errors": "0",
        "skipped": str(sum(c.result == "SKIP" for c in checks)),
        "time": f"{seconds:.3f}",
    }
    root = ET.Element("testsuites", counts)
    suite = ET.SubElement(root, "testsuite", {"name": "fastcells.check", **counts})
    props = ET.SubElement(suite, "properties")
    for name, value in properties.items():
        ET.SubElement(props, "property", name=name, value=str(value))
    for check in checks:
        case = ET.SubElement(suite, "testcase", {
            "classname": f"fastcells.check.{check.backend}.{check.cell}.{check.dtype}",
            "name": f"{check.config}-{check.what}",
            "time": f"{check.seconds:.4f}",
        })
        if check.result == "FAIL":
            failure = ET.SubElement(case, "failure", message=check.message)
            failure.text = check.details or _numbers(check)
        elif check.result == "SKIP":
            ET.SubElement(case, "skipped", message=check.message)
        else:
            ET.SubElement(case, "system-out").text = _numbers(check)
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def _numbers(check):
    return (f"max abs err {_format(check.max_abs)}, max rel err {_format(check.max_rel)}, "
            f"tolerance {_format(check.tolerance)}")
