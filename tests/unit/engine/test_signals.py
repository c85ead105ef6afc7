"""engine/signals.py: a real SIGINT, sent to this process, stops the phase it arrives in."""

from __future__ import annotations

import os
import signal
import time

import pytest

from trainyard.engine.signals import StopSignals
from trainyard.errors import Interrupted


def wait_for_signal() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)  # the handler raises before this ends


def test_a_stop_in_set_up_is_not_swallowed_by_except_exception():
    """Set-up code full of ``except Exception`` (an import fallback, a compile fallback, an optional graph trace)
    must not turn a Ctrl-C into a config error or a warning and carry on."""
    signals = StopSignals().install()
    try:
        with pytest.raises(Interrupted) as stop, signals.immediate("set-up", lambda: "stopped during set-up"):
            try:
                wait_for_signal()
            except Exception:  # what a library's fallback does
                pytest.fail("the stop was caught as an Exception")
    finally:
        signals.restore()
    assert stop.value.exit_code == 130 and "stopped during set-up" in str(stop.value)


def test_while_training_a_signal_is_noted_and_a_second_one_stops_at_once():
    signals = StopSignals().install()
    try:
        with signals.deferred("training"):
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 5
            while signals.received is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert signals.received == signal.SIGTERM  # noted: the loop stops at its next safe point
            with pytest.raises(Interrupted):
                wait_for_signal()
    finally:
        signals.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
