"""What the demo shows a person: numbered steps, a progress bar per long step, logs in files.

Each step's own output (Ray's, the jobs', the model build's) goes to a log file; the terminal gets
one header per step, a progress bar fed by the log's `step N/M` lines, and on a failure the
failing step, the tail of its log and the log's path.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

STEP_RE = re.compile(r"\bstep (\d+)/(\d+)\b")


class JobFailed(RuntimeError):
    """A command the demo ran exited non-zero; `log` holds its output."""

    def __init__(self, what: str, returncode: int, log: Path):
        super().__init__(f"{what} exited with {returncode}")
        self.what, self.returncode, self.log = what, returncode, log


def run_logged(
    what: str,
    cmd: list[str],
    log: Path,
    on_line: Callable[[str], None],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> float:
    """Run `cmd` with its output in `log`, handing each line to `on_line`; seconds taken.

    Raises JobFailed on a non-zero exit.
    """
    start = time.time()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            out.flush()
            on_line(line)
        rc = proc.wait()
    if rc != 0:
        raise JobFailed(what, rc, log)
    return round(time.time() - start, 1)


def tail(path: Path, n: int = 25) -> list[str]:
    """The last `n` lines of a text file (empty if it does not exist)."""
    if not path.is_file():
        return []
    return path.read_text(errors="replace").splitlines()[-n:]


class Console:
    """Step headers, progress bars and plain lines, all on one stream."""

    def __init__(self, total_steps: int, out: TextIO | None = None):
        self.total_steps, self.out, self.current = total_steps, out or sys.stdout, ""

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def step(self, n: int, title: str) -> None:
        self.current = title
        self.say(f"[{n}/{self.total_steps}] {title}")

    def bar(self, desc: str, total: int | None = None, unit: str = "step") -> tqdm:
        """A progress bar on the console's stream (elapsed time only when `total` is None)."""
        fmt = None if total else "    {desc}: {elapsed}{postfix}"
        return tqdm(
            total=total,
            desc=f"    {desc}" if total else desc,
            unit=unit,
            file=self.out,
            leave=True,
            dynamic_ncols=False,
            ncols=88,
            mininterval=0.5,
            bar_format=fmt,
        )

    def follow_steps(self, bar: tqdm) -> Callable[[str], None]:
        """A line handler that moves `bar` to the last `step N/M` seen (and refreshes it)."""

        def on_line(line: str) -> None:
            matches = STEP_RE.findall(line)
            if matches:
                done, total = map(int, matches[-1])
                if bar.total != total:
                    bar.total = total
                bar.n = done
            bar.refresh()

        return on_line

    def failed(self, exc: JobFailed) -> None:
        """Print the failing step, the tail of its log and the log's path."""
        self.say(f"\nFAILED at step '{self.current}': {exc}")
        lines = tail(exc.log)
        if lines:
            self.say(f"--- last {len(lines)} lines of {exc.log} ---")
            for line in lines:
                self.say(f"    {line}")
        self.say(f"full log: {exc.log}")
