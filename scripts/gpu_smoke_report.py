"""One line per GPU smoke check from pytest's JUnit XML (used by scripts/gpu_smoke.sh).

    python scripts/gpu_smoke_report.py NAME=REPORT.xml [NAME=REPORT.xml ...]

Each check is one pytest run with its own report; a line reads `PASS|FAIL|SKIP  NAME  detail`,
the detail being the figure the test recorded (`record_property("figure", ...)`) and, for a
failure or skip, pytest's message. A missing or unreadable report is a FAIL (pytest crashed).
Exit status: 0 when every check passed, 1 otherwise (a skipped check did not pass).
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def check_line(name: str, report: Path) -> tuple[str, str]:
    """(status, line) for one check's JUnit report."""
    try:
        cases = list(ET.parse(report).getroot().iter("testcase"))
    except (OSError, ET.ParseError) as exc:
        return "FAIL", f"FAIL  {name}  no test report ({type(exc).__name__}): pytest did not finish"
    if not cases:
        return "FAIL", f"FAIL  {name}  no test ran (wrong test id?)"
    status, details = "PASS", []
    for case in cases:
        for prop in case.iter("property"):
            if prop.get("name") == "figure":
                details.append(prop.get("value", ""))
        for tag, outcome in (("failure", "FAIL"), ("error", "FAIL"), ("skipped", "SKIP")):
            for node in case.iter(tag):
                message = (node.get("message") or node.text or "").strip().splitlines()
                details.append(message[0][:200] if message else tag)
                if status != "FAIL":
                    status = outcome
    return status, f"{status}  {name}  {'; '.join(details)}".rstrip()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or any("=" not in a for a in args):
        print("usage: gpu_smoke_report.py NAME=REPORT.xml [NAME=REPORT.xml ...]", file=sys.stderr)
        return 2
    statuses = []
    for arg in args:
        name, report = arg.split("=", 1)
        status, line = check_line(name, Path(report))
        statuses.append(status)
        print(line, flush=True)
    passed = statuses.count("PASS")
    print(f"gpu-smoke: {passed}/{len(statuses)} checks passed")
    return 0 if passed == len(statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
