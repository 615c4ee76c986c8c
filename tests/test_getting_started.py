"""The getting-started page is a tested transcript: its shell session runs as written.

Every ```console block of docs/getting-started/embedded.md is a session: a line `$ COMMAND`
runs COMMAND in a shell, the lines under it (up to the next `$`) are what it must print on
stdout, where `...` stands for anything (doctest's ELLIPSIS, whitespace normalised). The
commands run as a newcomer types them: in a fresh folder, with no setting but a fresh data
directory, so `clickstream up` starts embedded services of their own (stopped at the end).
"""

from __future__ import annotations

import doctest
import os
import re
import subprocess
import sys
from pathlib import Path

PAGE = Path(__file__).parent.parent / "docs" / "getting-started" / "embedded.md"
BLOCK = re.compile(r"^```console\n(.*?)^```$", re.MULTILINE | re.DOTALL)
CHECKER = doctest.OutputChecker()
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def transcript(text: str) -> list[tuple[str, str]]:
    """(command, expected stdout) of every `$` line of the page's console blocks."""
    steps: list[tuple[str, list[str]]] = []
    for block in BLOCK.findall(text):
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            else:
                assert steps, f"output before any command: {line!r}"
                steps[-1][1].append(line)
    return [(command, "\n".join(lines) + "\n" if lines else "") for command, lines in steps]


def test_the_page_has_a_transcript():
    steps = transcript(PAGE.read_text())
    commands = [command.split()[:2] for command, _ in steps]
    for needed in (["clickstream", "up"], ["clickstream", "consume"], ["clickstream", "report"]):
        assert needed in commands


def test_the_getting_started_session_runs_as_written(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_")}
    env["CLICKSTREAM_DATA_DIR"] = str(tmp_path / "svc")  # short: a Unix socket lives there
    env["CLICKSTREAM_CONFIG"] = str(Path(__file__).parent / "empty-config.yml")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    work = tmp_path / "work"
    work.mkdir()
    try:
        for command, expected in transcript(PAGE.read_text()):
            done = subprocess.run(
                ["bash", "-c", command],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert done.returncode == 0, f"$ {command}\n{done.stderr}"
            assert CHECKER.check_output(expected, done.stdout, FLAGS), (
                f"$ {command}\nexpected:\n{expected}\ngot:\n{done.stdout}"
            )
    finally:
        subprocess.run(
            [sys.executable, "-m", "clickstream", "down"], env=env, capture_output=True, timeout=60
        )
