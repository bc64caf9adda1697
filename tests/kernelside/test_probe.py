"""The kernel-side workspace probe (``kernelside.probe``).

``files()``: sizes and relative paths (subdirectories too), hidden files and directories left
out, the columns of CSV, TSV and Parquet tables (none for other or unreadable files), at most
``MAX_FILES`` files, in a stable order. ``libraries()``: the known libraries installed, with
versions. ``workspace()``: both, as JSON text. ``EXPRESSION``: evaluated as the server does it
(``eval`` in an empty namespace, and a real IPython shell's ``user_expressions``), it gives that
same JSON text and leaves no name behind.
"""

from __future__ import annotations

import ast
import csv
import importlib.metadata
import importlib.util
import json
import os

import numpy as np
import pandas as pd
import pytest

from kernelagent.kernelside import probe
from kernelagent.kernelside.probe import EXPRESSION, MAX_COLUMNS, MAX_FILES


def write(root, relative: str, content: str | bytes) -> int:
    """Writes ``content`` at ``root/relative`` (directories made); returns its size in bytes."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode() if isinstance(content, str) else content
    path.write_bytes(data)
    return len(data)


def by_path(found: list[dict]) -> dict[str, dict]:
    return {f["path"]: f for f in found}


# -- files() ----------------------------------------------------------------------------------


def test_files_give_relative_paths_and_sizes(tmp_path):
    sizes = {
        "notes.txt": write(tmp_path, "notes.txt", "hello\n"),
        "empty.bin": write(tmp_path, "empty.bin", b""),
        "sub/data.bin": write(tmp_path, "sub/data.bin", b"\x00" * 1234),
        "sub/deeper/more.txt": write(tmp_path, "sub/deeper/more.txt", "x" * 70_000),
    }
    found = probe.files(str(tmp_path))
    assert all(set(f) == {"path", "size", "columns"} for f in found)
    assert {f["path"]: f["size"] for f in found} == {
        os.path.join(*p.split("/")): size for p, size in sizes.items()
    }
    assert all(not os.path.isabs(f["path"]) for f in found)
    assert all(f["columns"] == [] for f in found)


def test_files_default_to_the_working_directory(tmp_path, monkeypatch):
    write(tmp_path, "a.csv", "x,y\n1,2\n")
    write(tmp_path, "sub/b.txt", "b")
    monkeypatch.chdir(tmp_path)
    found = probe.files()
    assert [f["path"] for f in found] == ["a.csv", os.path.join("sub", "b.txt")]
    assert found == probe.files(str(tmp_path))


def test_hidden_files_and_directories_are_left_out(tmp_path):
    write(tmp_path, "visible.txt", "v")
    write(tmp_path, ".env", "SECRET=1")
    write(tmp_path, ".git/config", "[core]")
    write(tmp_path, ".git/objects/ab/cdef", "blob")
    write(tmp_path, ".ipynb_checkpoints/nb-checkpoint.ipynb", "{}")
    write(tmp_path, "sub/.hidden.csv", "a,b\n")
    write(tmp_path, "sub/shown.txt", "s")
    write(tmp_path, "sub/.cache/inner.txt", "i")
    paths = [f["path"] for f in probe.files(str(tmp_path))]
    assert paths == ["visible.txt", os.path.join("sub", "shown.txt")]


def test_columns_of_csv_and_tsv_tables_come_from_the_first_row(tmp_path):
    write(tmp_path, "plain.csv", "id,name,score\n1,ann,3.5\n2,bob,4\n")
    write(tmp_path, "quoted.csv", '"city, state",zip,"say ""hi"""\nx,1,y\n')
    write(tmp_path, "tabs.tsv", "a\tb c\td,e\n1\t2\t3\n")
    write(tmp_path, "UPPER.CSV", "Upper,Case\n1,2\n")
    write(tmp_path, "crlf.csv", "p,q\r\n1,2\r\n")
    write(tmp_path, "unicode.csv", "température,größe,名前\n1,2,3\n")
    write(tmp_path, "header_only.csv", "only,header")
    write(tmp_path, "table.txt", "not,a,table\n")
    columns = {f["path"]: f["columns"] for f in probe.files(str(tmp_path))}
    assert columns == {
        "plain.csv": ["id", "name", "score"],
        "quoted.csv": ["city, state", "zip", 'say "hi"'],
        "tabs.tsv": ["a", "b c", "d,e"],
        "UPPER.CSV": ["Upper", "Case"],
        "crlf.csv": ["p", "q"],
        "unicode.csv": ["température", "größe", "名前"],
        "header_only.csv": ["only", "header"],
        "table.txt": [],
    }


def test_at_most_max_columns_of_a_wide_table(tmp_path):
    names = [f"col{i}" for i in range(MAX_COLUMNS + 10)]
    write(tmp_path, "wide.csv", ",".join(names) + "\n")
    [found] = probe.files(str(tmp_path))
    assert found["columns"] == names[:MAX_COLUMNS]


def test_columns_of_a_parquet_table(tmp_path):
    frame = pd.DataFrame({"when": pd.date_range("2024-01-01", periods=3), "value": [1.0, 2, 3]})
    frame["label"] = ["a", "b", "c"]
    frame.to_parquet(tmp_path / "table.parquet", index=False)
    names = [f"c{i}" for i in range(MAX_COLUMNS + 5)]
    wide = pd.DataFrame(np.zeros((1, len(names))), columns=names)
    wide.to_parquet(tmp_path / "wide.PARQUET", index=False)
    columns = {f["path"]: f["columns"] for f in probe.files(str(tmp_path))}
    assert columns["table.parquet"] == ["when", "value", "label"]
    assert columns["wide.PARQUET"] == names[:MAX_COLUMNS]


def test_unreadable_or_garbage_tables_have_no_columns(tmp_path):
    write(tmp_path, "garbage.parquet", b"\x00\x01PAR1 not parquet at all \xff\xfe" * 10)
    write(tmp_path, "empty.csv", b"")
    write(tmp_path, "empty.parquet", b"")
    too_long = "x" * (csv.field_size_limit() + 10)
    write(tmp_path, "huge_field.csv", too_long + ",b\n")
    write(tmp_path, "unterminated.tsv", '"never closed\tb\n' + too_long)
    found = by_path(probe.files(str(tmp_path)))
    assert set(found) == {
        "garbage.parquet",
        "empty.csv",
        "empty.parquet",
        "huge_field.csv",
        "unterminated.tsv",
    }
    assert all(f["columns"] == [] for f in found.values())
    assert found["huge_field.csv"]["size"] == len(too_long) + 3


def test_a_table_with_undecodable_bytes_still_gives_its_columns(tmp_path):
    write(tmp_path, "latin1.csv", "naïve,b\n1,2\n".encode("latin-1"))
    [found] = probe.files(str(tmp_path))
    assert found["columns"] == ["na\ufffdve", "b"]


def test_a_broken_symlink_is_left_out(tmp_path):
    write(tmp_path, "real.txt", "r")
    (tmp_path / "dangling.csv").symlink_to(tmp_path / "missing.csv")
    assert [f["path"] for f in probe.files(str(tmp_path))] == ["real.txt"]


def test_at_most_max_files_in_a_stable_order(tmp_path):
    # written in an order unlike the sorted one, across the root and two directories
    for i in reversed(range(80)):
        write(tmp_path, f"z_dir/f{i:03}.txt", "z")
    for i in reversed(range(80)):
        write(tmp_path, f"a_dir/f{i:03}.txt", "a")
    for i in reversed(range(60)):
        write(tmp_path, f"root{i:03}.txt", "r")
    found = probe.files(str(tmp_path))
    assert len(found) == MAX_FILES == 200
    expected = (
        [f"root{i:03}.txt" for i in range(60)]
        + [os.path.join("a_dir", f"f{i:03}.txt") for i in range(80)]
        + [os.path.join("z_dir", f"f{i:03}.txt") for i in range(60)]
    )
    assert [f["path"] for f in found] == expected
    assert probe.files(str(tmp_path)) == found


def test_files_in_a_directory_come_before_its_subdirectories_and_both_sorted(tmp_path):
    for relative in ["b.txt", "a/y.txt", "a/x.txt", "A.txt", "c/b/z.txt", "c/a.txt", "_/u.txt"]:
        write(tmp_path, relative, "-")
    paths = [f["path"] for f in probe.files(str(tmp_path))]
    assert paths == [
        "A.txt",
        "b.txt",
        os.path.join("_", "u.txt"),
        os.path.join("a", "x.txt"),
        os.path.join("a", "y.txt"),
        os.path.join("c", "a.txt"),
        os.path.join("c", "b", "z.txt"),
    ]


def test_an_empty_workspace_has_no_files(tmp_path):
    assert probe.files(str(tmp_path)) == []
    assert probe.files(str(tmp_path / "does-not-exist")) == []


# -- libraries() and workspace() --------------------------------------------------------------


def test_libraries_name_the_installed_ones_with_versions():
    present = probe.libraries()
    assert f"pandas {pd.__version__}" in present
    assert f"numpy {np.__version__}" in present
    names = [entry.split(" ")[0] for entry in present]
    assert all(len(entry.split(" ")) == 2 for entry in present)
    assert names == [name for name in probe.LIBRARIES if name in names]  # in LIBRARIES order
    for name in names:
        assert entry_version(present, name) == importlib.metadata.version(name)
    assert "pyarrow" in names  # a dependency: the kernel reads Parquet


def entry_version(present: list[str], name: str) -> str:
    return next(e.split(" ", 1)[1] for e in present if e.split(" ", 1)[0] == name)


def test_workspace_is_the_json_of_files_and_libraries(tmp_path, monkeypatch):
    write(tmp_path, "data.csv", "a,b\n1,2\n")
    write(tmp_path, "sub/readme.md", "# hi\n")
    write(tmp_path, ".secret", "x")
    monkeypatch.chdir(tmp_path)
    text = probe.workspace()
    assert isinstance(text, str)
    value = json.loads(text)
    assert set(value) == {"files", "libraries", "packages", "can_install"}
    assert value["files"] == [
        {"path": "data.csv", "size": 8, "columns": ["a", "b"]},
        {"path": os.path.join("sub", "readme.md"), "size": 5, "columns": []},
    ]
    assert value["libraries"] == probe.libraries()
    assert value["packages"] == {} and value["can_install"] is False  # no package directory


def test_workspace_names_what_the_session_installed(tmp_path, monkeypatch):
    (tmp_path / "installed.json").write_text('{"inflection": "0.5.1"}')
    monkeypatch.setenv("KERNELAGENT_PACKAGES", str(tmp_path))
    value = json.loads(probe.workspace())
    assert value["packages"] == {"inflection": "0.5.1"} and value["can_install"] is True


# -- EXPRESSION, as the server evaluates it ---------------------------------------------------


@pytest.fixture
def workspace_dir(tmp_path, monkeypatch):
    write(tmp_path, "sales.csv", "region,amount\nnorth,3\n")
    write(tmp_path, "raw/events.tsv", "ts\tkind\n1\tclick\n")
    write(tmp_path, "raw/notes.txt", 'it\'s "quoted" — and \\ escaped\n')
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_expression_in_an_empty_namespace_gives_the_workspace(workspace_dir):
    namespace: dict = {}
    value = eval(EXPRESSION, namespace)
    assert value == probe.workspace()
    assert [f["path"] for f in json.loads(value)["files"]] == [
        "sales.csv",
        os.path.join("raw", "events.tsv"),
        os.path.join("raw", "notes.txt"),
    ]
    assert set(namespace) <= {"__builtins__"}  # eval's own addition; no name is bound


def test_expression_through_user_expressions_gives_the_repr_of_the_json(workspace_dir, shell):
    before = dict(shell.user_ns)
    reply = shell.user_expressions({"v": EXPRESSION})
    assert set(reply) == {"v"}
    assert reply["v"]["status"] == "ok", reply
    text_plain = reply["v"]["data"]["text/plain"]
    expected = probe.workspace()
    assert text_plain == repr(expected)
    assert json.loads(ast.literal_eval(text_plain)) == json.loads(expected)
    after = dict(shell.user_ns)
    assert {n for n in before.keys() | after.keys() if before.get(n) is not after.get(n)} == set()


def test_expression_ignores_names_the_user_has_bound(workspace_dir, shell):
    result = shell.run_cell("json = os = csv = workspace = files = probe = None\n")
    assert result.success, result
    reply = shell.user_expressions({"v": EXPRESSION})
    assert reply["v"]["status"] == "ok", reply
    assert ast.literal_eval(reply["v"]["data"]["text/plain"]) == probe.workspace()
