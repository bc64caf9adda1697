"""The extension takes ipykernel's pause before each ``execute_reply`` away while loaded, and
gives the kernel its own value back when unloaded."""

from __future__ import annotations

import types

from kernelagent import kernelside


def test_the_pause_before_each_reply_is_taken_away_and_given_back(shell):
    shell.kernel = types.SimpleNamespace(_execute_sleep=0.0005)
    kernelside.reply_at_once(shell)
    assert shell.kernel._execute_sleep == 0
    kernelside.reply_at_once(shell)  # loaded twice: the kernel's own value is still known
    kernelside.reply_at_once(shell, False)
    assert shell.kernel._execute_sleep == 0.0005
    kernelside.reply_at_once(shell, False)  # unloaded twice: nothing to give back
    assert shell.kernel._execute_sleep == 0.0005


def test_a_shell_outside_a_kernel_is_left_alone(shell):
    kernelside.reply_at_once(shell)
    kernelside.reply_at_once(shell, False)
    assert not hasattr(shell, "kernel")
