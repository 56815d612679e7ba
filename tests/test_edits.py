"""Edits of code (``CodeEdits``, ``apply_edits``, ``code_diff``): what applies, what does
not and why, deletions, renames, and the diff a reviewer reads."""

from __future__ import annotations

import pytest

from swarmbus.protocols import (
    Code,
    CodeEdits,
    Edit,
    EditsNotApplied,
    Rename,
    SourceFile,
    apply_edits,
    code_diff,
    edits_type,
)

CALC = "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n"
TEST = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
CODE = Code(files=[SourceFile(path="calc.py", content=CALC),
                   SourceFile(path="test_calc.py", content=TEST)], notes="v1")


def files(code: Code) -> dict[str, str]:
    return {f.path: f.content for f in code.files}


def test_an_edit_replaces_the_one_place_it_matches() -> None:
    fixed = apply_edits(CODE, CodeEdits(edits=[Edit(
        path="calc.py", search="def add(a, b):\n    return a - b\n",
        replace="def add(a, b):\n    return a + b\n")], notes="fixed add"))
    assert files(fixed) == {"calc.py": CALC.replace("return a - b", "return a + b", 1),
                            "test_calc.py": TEST}
    assert fixed.notes == "fixed add"
    assert [f.path for f in fixed.files] == ["calc.py", "test_calc.py"]  # order kept


def test_edits_apply_in_order_each_to_the_result_of_the_last() -> None:
    out = apply_edits(CODE, CodeEdits(edits=[
        Edit(path="calc.py", search="def add(a, b):\n    return a - b",
             replace="def add(a, b):\n    return a + b"),
        Edit(path="calc.py", search="    return a + b\n", replace="    return b + a\n")]))
    assert files(out)["calc.py"].startswith("def add(a, b):\n    return b + a\n")
    assert out.notes == "v1"  # no notes of its own: the code's are kept


def test_a_search_that_matches_twice_is_refused_and_nothing_is_guessed() -> None:
    with pytest.raises(EditsNotApplied) as caught:
        apply_edits(CODE, CodeEdits(edits=[Edit(path="calc.py", search="    return a - b\n",
                                                replace="    return a + b\n")]))
    (failure,) = caught.value.failures
    assert (failure.index, failure.path) == (1, "calc.py")
    assert "occurs 2 times" in failure.reason and "include more" in failure.reason
    assert files(caught.value.code)["calc.py"] == CALC  # untouched


def test_whitespace_at_line_ends_does_not_stop_an_edit_but_a_wrong_line_does() -> None:
    out = apply_edits(CODE, CodeEdits(edits=[Edit(
        path="calc.py", search="def sub(a, b):  \n    return a - b\t\n",
        replace="def sub(a, b):\n    return a - b  # checked\n")]))
    assert files(out)["calc.py"].endswith("def sub(a, b):\n    return a - b  # checked\n")
    with pytest.raises(EditsNotApplied) as caught:
        apply_edits(CODE, CodeEdits(edits=[Edit(
            path="calc.py", search="def add(x, y):\n    return x - y\n", replace="")]))
    reason = caught.value.failures[0].reason
    assert reason.startswith("its search text is not in the file")
    # aider's hint: the lines that come closest, with where they are
    assert "the closest lines (from line 1) are:\ndef add(a, b):\n    return a - b" in reason


NESTED = Code(files=[SourceFile(path="f.py", content=(
    "def f(x):\n    if x:\n        y = 1\n        z = 2\n    return x\n"))])


@pytest.mark.parametrize(("search", "replace", "expected"), [
    # indented 4 spaces less than the file, every line: the replacement gets them too
    ("    y = 1\n    z = 2\n", "    y = 10\n    if z:\n        z = 20\n",
     "        y = 10\n        if z:\n            z = 20\n"),
    # 4 spaces more: they are taken from the replacement
    ("            y = 1\n            z = 2\n", "            y = 10\n",
     "        y = 10\n"),
])
def test_an_indentation_off_by_the_same_amount_moves_the_replacement_too(
    search: str, replace: str, expected: str
) -> None:
    out = apply_edits(NESTED, CodeEdits(edits=[Edit(path="f.py", search=search,
                                                    replace=replace)]))
    assert files(out)["f.py"] == "def f(x):\n    if x:\n" + expected + "    return x\n"


def test_an_indentation_off_unevenly_is_refused_rather_than_guessed() -> None:
    with pytest.raises(EditsNotApplied) as caught:
        apply_edits(NESTED, CodeEdits(edits=[Edit(path="f.py", search="if x:\ny = 1\n",
                                                  replace="if x:\ny = 2\n")]))
    assert "indented otherwise, and not by the same amount" in caught.value.failures[0].reason


def test_paths_are_compared_normalised_and_may_not_leave_the_directory() -> None:
    code = Code(files=[SourceFile(path="./pkg//calc.py", content=CALC)])
    out = apply_edits(code, CodeEdits(edits=[Edit(path="pkg/./calc.py", search="def sub",
                                                   replace="def minus")],
                                      files=[SourceFile(path="./pkg/new.py", content="")]))
    assert sorted(files(out)) == ["pkg/calc.py", "pkg/new.py"]
    with pytest.raises(EditsNotApplied) as caught:
        apply_edits(CODE, CodeEdits(files=[SourceFile(path="../evil.py", content="x")],
                                    rename=[Rename(path="calc.py", to="/etc/passwd")],
                                    delete=["/tmp/x"]))
    assert sorted(f.path for f in caught.value.failures) == ["../evil.py", "/etc/passwd",
                                                           "/tmp/x"]
    assert all("relative, inside the working directory" in f.reason
               for f in caught.value.failures)
    assert files(caught.value.code) == files(CODE)  # nothing of them was applied


def test_a_derived_code_type_revises_its_own_fields_too() -> None:
    class Released(Code):
        changelog: str = ""
        version: int = 1

    kind = edits_type(Released)
    assert kind is edits_type(Released) and issubclass(kind, CodeEdits)
    assert {"changelog", "version"} <= set(kind.model_fields)
    assert edits_type(Code) is CodeEdits
    v1 = Released(files=CODE.files, changelog="v1", version=1)
    v2 = apply_edits(v1, kind.model_validate({"delete": ["test_calc.py"], "version": 2}))
    assert isinstance(v2, Released)
    assert (v2.changelog, v2.version, [f.path for f in v2.files]) == ("v1", 2, ["calc.py"])


def test_a_failing_edit_leaves_the_others_applied_and_names_itself() -> None:
    with pytest.raises(EditsNotApplied) as caught:
        apply_edits(CODE, CodeEdits(edits=[
            Edit(path="calc.py", search="def add(a, b):\n    return a - b\n",
                 replace="def add(a, b):\n    return a + b\n"),
            Edit(path="nope.py", search="x", replace="y"),
            Edit(path="test_calc.py", search="", replace="import pytest\n")]))
    e = caught.value
    assert [(f.index, f.path) for f in e.failures] == [(2, "nope.py"), (3, "test_calc.py")]
    assert "no such file" in e.failures[0].reason and "empty" in e.failures[1].reason
    assert "return a + b" in files(e.code)["calc.py"]
    assert str(e).startswith("edit 2 (nope.py): no such file")


def test_an_edit_already_made_is_named_as_such() -> None:
    once = CodeEdits(edits=[Edit(path="calc.py", search="def add(a, b):\n    return a - b\n",
                                 replace="def add(a, b):\n    return a + b\n")])
    with pytest.raises(EditsNotApplied) as caught:
        apply_edits(apply_edits(CODE, once), once)
    assert "already in the file" in caught.value.failures[0].reason


def test_delete_rename_and_whole_files() -> None:
    out = apply_edits(CODE, CodeEdits(
        rename=[Rename(path="calc.py", to="mathlib.py")],
        delete=["test_calc.py"],
        files=[SourceFile(path="test_mathlib.py", content="from mathlib import add\n")],
        edits=[Edit(path="mathlib.py", search="def sub(a, b):\n", replace="def minus(a, b):\n")]))
    assert files(out) == {"mathlib.py": CALC.replace("def sub", "def minus"),
                          "test_mathlib.py": "from mathlib import add\n"}
    diff = code_diff(CODE, out)
    assert "--- a/calc.py\n+++ /dev/null\n" in diff
    assert "--- /dev/null\n+++ b/mathlib.py\n" in diff
    assert "--- a/test_calc.py\n+++ /dev/null\n" in diff
    assert "+def minus(a, b):\n" in diff


def test_a_rename_or_delete_of_what_is_not_there_fails() -> None:
    with pytest.raises(EditsNotApplied) as caught:
        apply_edits(CODE, CodeEdits(rename=[Rename(path="x.py", to="y.py"),
                                            Rename(path="calc.py", to="test_calc.py")],
                                    delete=["gone.py"]))
    assert [str(f) for f in caught.value.failures] == [
        "x.py: cannot rename to y.py: no such file",
        "calc.py: cannot rename to test_calc.py: that file exists",
        "gone.py: cannot delete: no such file"]


def test_the_diff_of_unchanged_code_is_empty_and_a_change_is_a_unified_diff() -> None:
    assert code_diff(CODE, CODE) == ""
    fixed = apply_edits(CODE, CodeEdits(files=[SourceFile(path="calc.py", content=CALC.replace(
        "return a - b", "return a + b", 1))]))
    assert code_diff(CODE, fixed) == (
        "--- a/calc.py\n+++ b/calc.py\n@@ -1,4 +1,4 @@\n def add(a, b):\n"
        "-    return a - b\n+    return a + b\n \n \n")


def test_a_type_derived_from_code_keeps_its_own_fields() -> None:
    class Reviewed(Code):
        reviewer: str = ""

    code = Reviewed(files=CODE.files, reviewer="ann")
    out = apply_edits(code, CodeEdits(delete=["test_calc.py"]))
    assert isinstance(out, Reviewed) and out.reviewer == "ann"
    assert [f.path for f in out.files] == ["calc.py"]


def test_code_answered_for_edits_is_a_whole_file_revision() -> None:
    """A model (or a script) that answers a ``CodeEdits`` request with ``Code`` gives whole
    files: they validate as ``CodeEdits.files`` and replace the files they name."""
    edits = CodeEdits.model_validate(Code(files=[SourceFile(path="calc.py", content="x = 1\n")],
                                          notes="n").model_dump())
    assert files(apply_edits(CODE, edits)) == {"calc.py": "x = 1\n", "test_calc.py": TEST}
