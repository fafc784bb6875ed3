"""Holding Ctrl-C and TERM around a step that must not be cut in two (in a child process: the
signals are real)."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import os, signal, sys
from ptbjobs.core.interrupts import interrupt_held, interrupts_held
# Ctrl-C as a terminal gives it: a shell starts a command it puts in the background with SIGINT
# ignored, and the child would inherit that
signal.signal(signal.SIGINT, signal.default_int_handler)
with interrupts_held():
    os.kill(os.getpid(), signal.{signal})
    print("held:", interrupt_held(), flush=True)
    {end}
print("not reached", flush=True)
"""


@pytest.mark.parametrize("signal_name, code", [("SIGINT", -2), ("SIGTERM", -15)])
def test_a_signal_inside_the_block_waits_for_its_end_and_then_acts(signal_name, code):
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(signal=signal_name, end="pass")],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout == "held: True\n"  # the block ran to its end, and nothing after it
    assert done.returncode == code and (signal_name != "SIGINT" or "KeyboardInterrupt" in done.stderr)


def test_a_block_that_stops_early_on_the_signal_ends_with_its_own_error():
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(signal="SIGINT", end="sys.exit('stopped early')")],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout == "held: True\n" and done.stderr == "stopped early\n" and done.returncode == 1
