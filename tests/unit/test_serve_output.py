"""Where `modelfleet serve`'s output goes: its lines to the terminal, everything else
(this process's, and that of the processes it starts) to the log file, read back as it
grows."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from modelfleet_serving.local import LogFollower

ROOT = Path(__file__).resolve().parents[2]


def test_output_to_file_keeps_the_terminal_for_our_lines(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "serve.log"
    # In a process of its own: the redirection is of file descriptors 1 and 2, which
    # pytest's capture also uses.
    script = textwrap.dedent(
        f"""
        import subprocess, sys
        from pathlib import Path
        from modelfleet_serving.local import output_to_file

        with output_to_file(Path({str(log)!r})) as terminal:
            print("ours", file=terminal.out)
            print("our error", file=terminal.err)
            print("python's stdout")
            print("python's stderr", file=sys.stderr)
            subprocess.run(["sh", "-c", "echo child; echo child-err >&2"], check=True)
        print("after")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "serving")},
        check=True,
    )
    assert result.stdout.splitlines() == ["ours", "after"]
    assert result.stderr.splitlines() == ["our error"]
    assert log.read_text().splitlines() == [
        "python's stdout",
        "python's stderr",
        "child",
        "child-err",
    ]


def test_the_follower_hands_over_each_complete_line(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    log.write_text("before\n")
    seen: list[str] = []
    with LogFollower(log, seen.append), log.open("a") as out:
        out.write("one\ntw")
        out.flush()
        deadline = time.monotonic() + 10
        while seen != ["before", "one"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen == ["before", "one"]
        out.write("o\nthree\n")
        out.flush()
    # Leaving reads what is left.
    assert seen == ["before", "one", "two", "three"]


def test_a_failing_callback_does_not_stop_the_follower(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    log.write_text("bad\ngood\n")
    seen: list[str] = []

    def on_line(line: str) -> None:
        if line == "bad":
            raise ValueError(line)
        seen.append(line)

    with LogFollower(log, on_line):
        pass
    assert seen == ["good"]
