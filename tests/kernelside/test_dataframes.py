"""The kernel-side DataFrame summary (``kernelside.dataframes``) and the IPython extension.

``summary()`` on its own: shape, dtypes, head and describe of a frame, the describe limits
(``DESCRIBE_ROWS``, ``DESCRIBE_CELLS``), the ``MAX_COLUMNS`` cut, string column names, and that it
never raises. Then the extension in a real IPython shell, loaded as the server does it
(``LOAD_CODE``, silently): a DataFrame's display bundle carries ``MIME_TYPE`` next to text/html
and text/plain, no name is bound in the user's namespace, loading twice is harmless, user code
shadowing builtins does not matter, and unloading takes the entry away again.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from IPython.utils.capture import capture_output

from kernelagent import kernelside
from kernelagent.kernelside import LOAD_CODE, dataframes
from kernelagent.kernelside.dataframes import (
    DESCRIBE_CELLS,
    DESCRIBE_ROWS,
    MAX_COLUMNS,
    MIME_TYPE,
    summary,
)

EXTENSION = "kernelagent.kernelside"


def entry(frame) -> dict:
    """The summary's value under ``MIME_TYPE`` (fails the test when there is none)."""
    result = summary(frame)
    assert result is not None
    assert set(result) == {MIME_TYPE}
    return result[MIME_TYPE]


# -- summary() ----------------------------------------------------------------------------------


def test_summary_of_a_small_frame():
    frame = pd.DataFrame({"a": [1, 2, 3], "b": [0.5, 1.5, 2.5], "c": ["x", "y", "z"]})
    value = entry(frame)
    assert set(value) == {"shape", "dtypes", "head", "describe"}
    assert value["shape"] == [3, 3]
    assert value["dtypes"] == {name: str(dtype) for name, dtype in frame.dtypes.items()}
    assert value["dtypes"]["a"] == "int64" and value["dtypes"]["b"] == "float64"
    assert value["head"] == frame.head().to_string(max_colwidth=50, line_width=120)
    assert value["describe"] == frame.describe().to_string(max_colwidth=50, line_width=120)
    assert "mean" in value["describe"] and "count" in value["describe"]


def test_summary_is_json_as_sent_on_the_wire():
    frame = pd.DataFrame(np.arange(12, dtype=np.int32).reshape(4, 3), columns=[0, 1.5, None])
    value = entry(frame)
    assert json.loads(json.dumps(value)) == value
    assert all(type(n) is int for n in value["shape"])


def test_head_keeps_five_rows_and_cuts_long_text():
    frame = pd.DataFrame({"n": range(100), "text": ["w" * 200] * 100})
    head = entry(frame)["head"]
    lines = head.splitlines()
    assert len(lines) == 6  # the header and five rows
    assert lines[-1].split()[0] == "4"
    assert "w" * 200 not in head and "..." in head  # max_colwidth=50


def test_describe_up_to_describe_rows():
    at_limit = pd.DataFrame({"x": np.zeros(DESCRIBE_ROWS, dtype=np.int8)})
    assert entry(at_limit)["describe"] is not None
    beyond = pd.DataFrame({"x": np.zeros(DESCRIBE_ROWS + 1, dtype=np.int8)})
    value = entry(beyond)
    assert value["describe"] is None
    assert value["shape"] == [DESCRIBE_ROWS + 1, 1]
    assert value["head"] and value["dtypes"] == {"x": "int8"}


def test_describe_up_to_describe_cells():
    rows = DESCRIBE_CELLS // MAX_COLUMNS
    assert rows <= DESCRIBE_ROWS  # the cell limit is the one that applies here
    at_limit = pd.DataFrame(np.zeros((rows, MAX_COLUMNS), dtype=np.int8))
    assert entry(at_limit)["describe"] is not None
    beyond = pd.DataFrame(np.zeros((rows + 1, MAX_COLUMNS), dtype=np.int8))
    value = entry(beyond)
    assert value["describe"] is None
    assert value["shape"] == [rows + 1, MAX_COLUMNS]


def test_at_most_max_columns_kept():
    frame = pd.DataFrame(np.ones((3, 60)), columns=[f"c{i}" for i in range(60)])
    value = entry(frame)
    assert value["shape"] == [3, 60]
    assert len(value["dtypes"]) == MAX_COLUMNS == 50
    assert list(value["dtypes"]) == [f"c{i}" for i in range(MAX_COLUMNS)]
    for text in (value["head"], value["describe"]):
        assert "c49" in text
        assert not any(f"c{i}" in text for i in range(MAX_COLUMNS, 60))


def test_non_string_column_names_become_strings():
    stamp = pd.Timestamp("2024-01-01")
    frame = pd.DataFrame([[1, 2.0, "a", True]], columns=[0, 1.5, stamp, None])
    value = entry(frame)
    assert list(value["dtypes"]) == ["0", "1.5", str(stamp), "None"]
    assert all(isinstance(name, str) for name in value["dtypes"])
    columns = pd.MultiIndex.from_tuples([("a", "x"), ("a", "y")])
    nested = pd.DataFrame([[1, 2]], columns=columns)
    assert list(entry(nested)["dtypes"]) == ["('a', 'x')", "('a', 'y')"]


def test_a_frame_that_cannot_be_described_keeps_the_rest():
    value = entry(pd.DataFrame(index=range(3)))  # describe() raises: no columns
    assert value["shape"] == [3, 0]
    assert value["describe"] is None
    assert value["dtypes"] == {}
    assert "Empty DataFrame" in value["head"]


class BrokenShape:
    @property
    def shape(self):
        raise RuntimeError("no shape")


class Unprintable:
    def __repr__(self):
        raise RuntimeError("no repr")

    __str__ = __repr__


@pytest.mark.parametrize(
    "thing",
    [BrokenShape(), None, 42, "text", (1, 2), pd.Series([1, 2])],
    ids=["shape-raises", "none", "int", "str", "tuple", "series"],
)
def test_summary_never_raises(thing):
    assert summary(thing) is None


def test_summary_of_a_frame_whose_cells_cannot_be_printed_is_none():
    assert summary(pd.DataFrame({"a": [Unprintable()]})) is None


# -- the extension in a real IPython shell ----------------------------------------------------


def load(ip) -> None:
    result = ip.run_cell(LOAD_CODE, silent=True, store_history=False)
    assert result.success, result


def bundle(ip, thing) -> dict:
    data, _ = ip.display_formatter.format(thing)
    return data


FRAME = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})


def test_without_the_extension_no_summary(shell):
    data = bundle(shell, FRAME)
    assert MIME_TYPE not in data
    assert {"text/plain", "text/html"} <= set(data)


def test_loaded_extension_adds_the_summary_to_a_frame_display(shell):
    load(shell)
    assert EXTENSION in shell.extension_manager.loaded
    data = bundle(shell, FRAME)
    assert {MIME_TYPE, "text/plain", "text/html"} <= set(data)
    assert data[MIME_TYPE] == summary(FRAME)[MIME_TYPE]
    assert data["text/plain"] == repr(FRAME)
    assert data["text/html"] == FRAME._repr_html_()
    json.dumps(data)  # the kernel sends it as JSON


def test_summary_reaches_the_displayed_output_of_a_cell(shell):
    load(shell)
    with capture_output() as captured:
        result = shell.run_cell(
            "import pandas as pd\nfrom IPython.display import display\n"
            "display(pd.DataFrame({'q': [1.0, 2.0]}))"
        )
    assert result.success, result
    [output] = captured.outputs
    assert {MIME_TYPE, "text/plain", "text/html"} <= set(output.data)
    assert output.data[MIME_TYPE]["shape"] == [2, 1]
    assert output.data[MIME_TYPE]["dtypes"] == {"q": "float64"}


def test_only_data_frames_get_the_summary(shell):
    load(shell)

    class Table(pd.DataFrame):
        pass

    assert MIME_TYPE in bundle(shell, Table({"a": [1]}))
    for other in (pd.Series([1, 2]), {"a": 1}, [1, 2], "text", np.arange(3)):
        assert MIME_TYPE not in bundle(shell, other)


def test_loading_binds_no_name_in_the_user_namespace(shell):
    before = dict(shell.user_ns)
    load(shell)
    after = dict(shell.user_ns)
    changed = {
        name for name in before.keys() | after.keys() if before.get(name) is not after.get(name)
    }
    # IPython's own bookkeeping names start with "_"; the load may touch none of the others
    assert not {name for name in changed if not name.startswith("_")}, changed
    assert "_" not in changed  # silent: the load's return value is not kept as the last result
    assert MIME_TYPE in bundle(shell, FRAME)  # and it did load


def test_loading_twice_is_harmless(shell):
    load(shell)
    first = bundle(shell, FRAME)
    before = set(shell.user_ns)
    load(shell)
    assert shell.extension_manager.load_extension(EXTENSION) == "already loaded"
    assert set(shell.user_ns) == before
    second = bundle(shell, FRAME)
    assert second == first
    assert second[MIME_TYPE] == summary(FRAME)[MIME_TYPE]


def test_user_code_shadowing_builtins_does_not_break_the_summary(shell):
    load(shell)
    result = shell.run_cell(
        "import pandas as pd\n"
        "def str(*args, **kwargs):\n    raise RuntimeError('shadowed str')\n"
        "def int(*args, **kwargs):\n    raise RuntimeError('shadowed int')\n"
        "dict = list = warnings = MIME_TYPE = None\n"
        "frame = pd.DataFrame({1: [1, 2], 'b': [0.5, 1.5]})\n"
    )
    assert result.success, result
    data = bundle(shell, shell.user_ns["frame"])
    assert data[MIME_TYPE]["shape"] == [2, 2]
    assert data[MIME_TYPE]["dtypes"] == {"1": "int64", "b": "float64"}
    assert data[MIME_TYPE]["describe"] is not None


def test_unloading_removes_the_summary_after_a_display(shell):
    load(shell)
    assert MIME_TYPE in bundle(shell, FRAME)
    formatter = shell.display_formatter.mimebundle_formatter
    assert pd.DataFrame in formatter.type_printers  # the deferred printer was moved there
    kernelside.unload_ipython_extension(shell)
    data = bundle(shell, FRAME)
    assert MIME_TYPE not in data
    assert {"text/plain", "text/html"} <= set(data)
    assert pd.DataFrame not in formatter.type_printers


def test_unloading_before_any_display_removes_the_summary(shell):
    load(shell)
    assert shell.extension_manager.unload_extension(EXTENSION) is None
    assert EXTENSION not in shell.extension_manager.loaded
    assert MIME_TYPE not in bundle(shell, FRAME)


def test_reloading_after_unloading_brings_the_summary_back(shell):
    load(shell)
    shell.extension_manager.unload_extension(EXTENSION)
    load(shell)
    assert bundle(shell, FRAME)[MIME_TYPE] == summary(FRAME)[MIME_TYPE]


def test_register_is_by_name_for_every_pandas_module(shell):
    dataframes.register(shell)
    deferred = shell.display_formatter.mimebundle_formatter.deferred_printers
    for module in dataframes.DATAFRAME_MODULES:
        assert deferred[(module, "DataFrame")] is summary
    assert pd.DataFrame.__module__ in dataframes.DATAFRAME_MODULES
    dataframes.unregister(shell)
    for module in dataframes.DATAFRAME_MODULES:
        assert (module, "DataFrame") not in deferred
