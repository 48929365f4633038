"""The README's CDS Hooks walkthrough, run exactly as written (in a scratch folder that sees
the checkout's examples/, on a free port instead of 8080): its `$ ` commands in one bash
session, and their output compared with the lines the README shows under them."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def walkthrough() -> tuple[list[str], list[str]]:
    """The README's console block that starts the service: its commands and their output."""
    blocks = re.findall(r"```console\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (block,) = [b for b in blocks if "iechs serve" in b]
    commands: list[str] = []
    expected: list[str] = []
    current: str | None = None
    for line in block.splitlines():
        if current is not None:
            current += "\n" + line
        elif line.startswith("$ "):
            current = line[2:]
        else:
            expected.append(line)
            continue
        # a command goes on after a trailing backslash or inside an open single quote
        if not current.endswith("\\") and current.count("'") % 2 == 0:
            commands.append(current)
            current = None
    assert current is None, "the walkthrough ends inside a command"
    return commands, expected


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_walkthrough_has_the_promised_steps() -> None:
    commands, expected = walkthrough()
    assert commands[0] == (
        'iechs run examples/service/iec-hs-no-steroid.json --store x.db | grep "Final state"'
    )
    assert commands[1] == "iechs serve --store x.db --port 8080 &"
    assert any("@examples/service/order-sign-tocilizumab.json" in c for c in commands)
    assert '"indicator":"critical"' in expected


@pytest.mark.skipif(shutil.which("curl") is None, reason="the walkthrough uses curl")
def test_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    commands, expected = walkthrough()
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    port = str(free_port())
    script = "\n".join(c.replace("8080", port) for c in commands)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the server goes with it
    )
    try:
        out, err = process.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    assert out.splitlines() == expected, err
    assert (tmp_path / "x.db").is_file()
