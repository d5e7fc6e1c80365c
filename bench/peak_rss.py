"""Run a module as `python -m` would, and write its peak RSS to a file at exit.

    python bench/peak_rss.py OUT_FILE -m app.cli reconcile ...
    python bench/peak_rss.py OUT_FILE path/to/script.py ...

The kernel's figure for the process's own memory (`VmHWM`, in kB), read
from /proc just before the interpreter exits. `getrusage` cannot give it:
a child's `ru_maxrss` starts from the RSS of the parent it was forked from.
"""

from __future__ import annotations

import atexit
import runpy
import sys
from pathlib import Path


def peak_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    out, *argv = sys.argv[1:]
    atexit.register(lambda: Path(out).write_text(str(peak_rss_kb())))
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
