"""``shell``: a fresh in-process IPython shell, as in a kernel (the extension not loaded)."""

from __future__ import annotations

import sys
import types

import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config


@pytest.fixture
def shell():
    assert not InteractiveShell.initialized()
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    module = types.ModuleType("kernelagent_kernelside_tests")
    ip = InteractiveShell.instance(config=config, user_module=module)
    yield ip
    InteractiveShell.clear_instance()
    sys.modules.pop(module.__name__, None)
