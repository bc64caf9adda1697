"""A pandas DataFrame's display also carries ``MIME_TYPE``: ``{"shape", "dtypes", "head",
"describe"}``, what the agent's budgeted view of a table shows the model.

IPython merges a mimebundle formatter's output with the other formatters', so ``text/html`` and
``text/plain`` stay. pandas is not imported here (registration is by name). The summary stays
cheap (``describe()`` only up to ``DESCRIBE_ROWS`` rows and ``DESCRIBE_CELLS`` cells, about
0.2 s; at most ``MAX_COLUMNS`` columns) and never raises: a failure leaves the display as it was.
"""

from __future__ import annotations

import warnings
from typing import Any

MIME_TYPE = "application/vnd.kernelagent.dataframe+json"
DESCRIBE_ROWS, DESCRIBE_CELLS, MAX_COLUMNS = 200_000, 1_000_000, 50
TEXT_OPTIONS = {"max_colwidth": 50, "line_width": 120}
# pandas >= 3 gives DataFrame.__module__ as "pandas", earlier ones "pandas.core.frame"
DATAFRAME_MODULES = ("pandas", "pandas.core.frame")


def summary(frame: Any) -> dict[str, Any] | None:
    """The extra mimebundle entry for ``frame``; None when it cannot be made."""
    try:
        rows, cols = frame.shape
        part = frame.iloc[:, :MAX_COLUMNS] if cols > MAX_COLUMNS else frame
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            head = part.head().to_string(**TEXT_OPTIONS)
            describe = None
            if rows <= DESCRIBE_ROWS and rows * part.shape[1] <= DESCRIBE_CELLS:
                try:
                    describe = part.describe().to_string(**TEXT_OPTIONS)
                except Exception:  # noqa: BLE001 - some frames cannot be described
                    describe = None
        dtypes = {str(name): str(dtype) for name, dtype in part.dtypes.items()}
        shape = [int(rows), int(cols)]
        return {MIME_TYPE: {"shape": shape, "dtypes": dtypes, "head": head, "describe": describe}}
    except Exception:  # noqa: BLE001 - never break the user's display
        return None


def register(shell: Any) -> None:
    formatter = shell.display_formatter.mimebundle_formatter
    for module in DATAFRAME_MODULES:
        formatter.for_type_by_name(module, "DataFrame", summary)


def unregister(shell: Any) -> None:
    formatter = shell.display_formatter.mimebundle_formatter
    for module in DATAFRAME_MODULES:
        formatter.deferred_printers.pop((module, "DataFrame"), None)
        for cls in list(formatter.type_printers):
            if getattr(cls, "__module__", None) == module and cls.__name__ == "DataFrame":
                formatter.type_printers.pop(cls, None)
