"""Revisions of code as edits: search/replace blocks, whole files, deletions, renames.

A step that revises its own ``Code`` artifact answers with ``CodeEdits`` after the
first round instead of every file again (the output is most of a task's bill).
``apply_edits`` turns the edits and the current code into the new code, the same
way every time; ``code_diff`` shows what changed, as a unified diff.

The format follows aider's "diff" edit format (a SEARCH block copied exactly from
the file and its REPLACE, https://aider.chat/docs/more/edit-formats.html), carried
in the structured output every step already uses, with aider's matching rules: the
exact text first, then the same lines ignoring whitespace at their ends, and a
block that matches nothing is sent back naming it, with the lines that come
closest.
"""

from __future__ import annotations

import difflib
import functools
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ConfigDict, Field, create_model

from ._data import Code, SourceFile
from ._registry import data_type
from ._usage import _Data

__all__ = ["CodeEdits", "Edit", "EditFailure", "EditsNotApplied", "Rename", "apply_edits",
           "code_diff", "edits_type"]


class Edit(_Data):
    """Replace ``search`` with ``replace`` in the file at ``path``."""

    model_config = ConfigDict(extra="forbid")

    path: str
    search: str = Field(description="Whole lines copied exactly from the current file, "
                        "indentation included, enough of them to occur only once.")
    replace: str = Field(description="The lines that take their place (empty: remove them).")


class Rename(_Data):
    """Move the file at ``path`` to ``to``."""

    model_config = ConfigDict(extra="forbid")

    path: str
    to: str


@data_type("swarmbus.CodeEdits")
class CodeEdits(_Data):
    """A revision of the current code. Applied in this order: ``rename``, ``delete``,
    ``files`` (whole content: a new file, or one rewritten entirely), then ``edits`` in
    order (by the files' new paths). Files it does not name stay as they are. A key it
    does not know is an error (a misspelt ``edit`` would otherwise change nothing)."""

    model_config = ConfigDict(extra="forbid")

    edits: list[Edit] = Field(default_factory=list)
    files: list[SourceFile] = Field(default_factory=list, description="Whole new files, or "
                                    "files rewritten entirely.")
    delete: list[str] = Field(default_factory=list, description="Paths of files to remove.")
    rename: list[Rename] = Field(default_factory=list)
    notes: str = ""


@functools.cache
def edits_type(code_type: type[Code]) -> type[CodeEdits]:
    """The edits a step whose output is ``code_type`` answers with: ``CodeEdits``, plus
    each field ``code_type`` adds to ``Code``, optional (null: unchanged), so that a
    later round can change them too."""
    added: dict[str, Any] = {
        name: (Any if info.annotation is None else info.annotation | None,
               Field(None, description=(
            f"The new {name} (null: unchanged)." + (f" {info.description}"
                                                    if info.description else ""))))
        for name, info in code_type.model_fields.items() if name not in Code.model_fields}
    if not added:
        return CodeEdits
    made: type[CodeEdits] = create_model(
        f"{code_type.__name__}Edits", __base__=CodeEdits, __module__=code_type.__module__,
        **added)
    return made


@dataclass(frozen=True, slots=True)
class EditFailure:
    """Why one part of a ``CodeEdits`` did not apply. ``index``: the edit's position
    (from 1) in ``edits``, or 0 for a rename or deletion."""

    index: int
    path: str
    reason: str

    def __str__(self) -> str:
        what = f"edit {self.index} ({self.path})" if self.index else self.path
        return f"{what}: {self.reason}"


class EditsNotApplied(ValueError):
    """Some edits did not apply. ``code`` is the code with every other edit applied;
    ``failures`` say which did not, and why."""

    def __init__(self, code: Code, failures: Sequence[EditFailure]) -> None:
        self.code = code
        self.failures = list(failures)
        super().__init__("; ".join(str(f) for f in self.failures))


def apply_edits(code: Code, change: CodeEdits) -> Code:
    """``code`` revised by ``change`` (a copy of the same type: ``notes`` replaced when
    ``change`` has some, a field of a type derived from ``Code`` when ``change`` (an
    ``edits_type``) gives it, the others kept). Paths are compared normalised
    (``./a.py`` is ``a.py``). Raises ``EditsNotApplied`` (with the code as far as it
    could be revised) when a rename, deletion or edit cannot apply: a path that is not
    there or leaves the working directory, a search text found nowhere or in more
    than one place."""
    files = {_norm(f.path) or f.path: f.content for f in code.files}
    failures: list[EditFailure] = []
    change, outside = _normalised(change)
    failures += [EditFailure(0, p, "a path must be relative, inside the working directory")
                 for p in outside]
    for r in change.rename:
        if r.path not in files:
            failures.append(EditFailure(0, r.path, f"cannot rename to {r.to}: no such file"))
        elif r.to in files and r.to != r.path:
            failures.append(EditFailure(0, r.path, f"cannot rename to {r.to}: that file exists"))
        else:
            files[r.to] = files.pop(r.path)
    for path in change.delete:
        if files.pop(path, None) is None:
            failures.append(EditFailure(0, path, "cannot delete: no such file"))
    for f in change.files:
        files[f.path] = f.content
    for i, e in enumerate(change.edits, 1):
        text = files.get(e.path)
        if text is None:
            failures.append(EditFailure(i, e.path, "no such file (give a new file whole, in "
                                        "`files`)"))
            continue
        revised, why = _replace(text, e.search, e.replace)
        if revised is None:
            failures.append(EditFailure(i, e.path, why))
        else:
            files[e.path] = revised
    fields = {k: v for k in type(change).model_fields if k not in CodeEdits.model_fields
              and k in type(code).model_fields and (v := getattr(change, k)) is not None}
    out = code.model_copy(update={
        "files": [SourceFile(path=p, content=c) for p, c in files.items()],
        "notes": change.notes or code.notes, **fields})
    if failures:
        raise EditsNotApplied(out, failures)
    return out


def _norm(path: str) -> str | None:
    """``path`` as the working directory knows it (``./a//b.py`` is ``a/b.py``), or None
    when it is absolute or leaves the directory."""
    p = posixpath.normpath(path.replace("\\", "/"))
    if p.startswith("/") or p == "." or p == ".." or p.startswith("../"):
        return None
    return p


def _normalised(change: CodeEdits) -> tuple[CodeEdits, list[str]]:
    """``change`` with its paths normalised, and the paths that are not allowed (those
    parts are left out)."""
    bad: list[str] = []

    def ok(path: str) -> str | None:
        p = _norm(path)
        if p is None:
            bad.append(path)
        return p

    return change.model_copy(update={
        "edits": [e.model_copy(update={"path": p}) for e in change.edits
                  if (p := ok(e.path)) is not None],
        "files": [f.model_copy(update={"path": p}) for f in change.files
                  if (p := ok(f.path)) is not None],
        "delete": [p for d in change.delete if (p := ok(d)) is not None],
        "rename": [r.model_copy(update={"path": p, "to": t}) for r in change.rename
                   if (p := ok(r.path)) is not None and (t := ok(r.to)) is not None],
    }), bad


def _replace(text: str, search: str, replace: str) -> tuple[str | None, str]:
    """``text`` with the one place ``search`` matches replaced, or None and why not."""
    if not search.strip():
        return None, "its search text is empty: copy the lines to change from the file"
    count = text.count(search)
    if count == 1:
        return text.replace(search, replace, 1), ""
    if count > 1:
        return None, (f"its search text occurs {count} times: include more of the lines "
                      "around it, so that it occurs once")
    # aider's next try: the same lines, ignoring whitespace at either end of each; an
    # indentation off by the same amount on every line is given to the replacement too.
    lines = text.splitlines(keepends=True)
    asked = search.splitlines()
    while asked and not asked[-1].strip():
        asked.pop()
    want = [s.strip() for s in asked]
    starts = [i for i in range(len(lines) - len(want) + 1)
              if [s.strip() for s in lines[i:i + len(want)]] == want]
    if len(starts) == 1:
        i = starts[0]
        found = lines[i:i + len(want)]
        shifted = _reindent(replace, asked, found)
        if shifted is None:
            return None, ("its search lines are in the file, but indented otherwise, and not "
                          "by the same amount on every line: copy them exactly")
        tail = "" if shifted.endswith("\n") or not shifted else "\n"
        new = "".join(lines[:i]) + shifted + tail + "".join(lines[i + len(want):])
        return new, ""
    if len(starts) > 1:
        return None, (f"its search lines occur {len(starts)} times: include more of the "
                      "lines around them, so that they occur once")
    if replace.strip() and replace in text:
        return None, "its replace text is already in the file: leave this edit out"
    return None, "its search text is not in the file" + _closest(lines, want)


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _reindent(replace: str, asked: list[str], found: list[str]) -> str | None:
    """``replace`` with the indentation the file has where ``asked`` was found: the same
    text added to (or taken from) the start of every line, when every non-blank line
    of the search is off by that same text; None when they are off unevenly."""
    pairs = [(_indent(a), _indent(f)) for a, f in zip(asked, found, strict=True) if a.strip()]
    if all(f.endswith(a) for a, f in pairs):
        pads = {f[: len(f) - len(a)] for a, f in pairs}
        if len(pads) == 1:
            pad = pads.pop()
            return "".join(pad + line if line.strip() else line
                           for line in replace.splitlines(keepends=True))
    if all(a.endswith(f) for a, f in pairs):
        extras = {a[: len(a) - len(f)] for a, f in pairs}
        if len(extras) == 1:
            extra = extras.pop()
            return "".join(line.removeprefix(extra)
                           for line in replace.splitlines(keepends=True))
    return None


def _closest(lines: list[str], want: list[str]) -> str:
    """The run of the file's lines most like ``want`` (as aider shows it), if any is."""
    if not want or not lines:
        return ""
    n = len(want)
    best, at = 0.0, 0
    for i in range(max(1, len(lines) - n + 1)):
        ratio = difflib.SequenceMatcher(
            None, "\n".join(want), "".join(lines[i:i + n])).ratio()
        if ratio > best:
            best, at = ratio, i
    if best < 0.5:
        return ""
    shown = "".join(lines[at:at + min(n, 20)]).rstrip("\n")
    return f"; the closest lines (from line {at + 1}) are:\n{shown}"


def code_diff(before: Code, after: Code, *, context: int = 2,
              max_chars: int | None = None) -> str:
    """What changed from ``before`` to ``after``: a unified diff per changed file (a
    deleted file diffed against nothing, a new one from nothing), in path order; ''
    when nothing changed. Longer than ``max_chars``, it is cut at a line's end and
    says how many lines were left out."""
    old = {f.path: f.content for f in before.files}
    new = {f.path: f.content for f in after.files}
    out: list[str] = []
    for path in sorted(old.keys() | new.keys()):
        a, b = old.get(path), new.get(path)
        if a == b:
            continue
        out += difflib.unified_diff(
            (a or "").splitlines(keepends=True), (b or "").splitlines(keepends=True),
            fromfile=f"a/{path}" if a is not None else "/dev/null",
            tofile=f"b/{path}" if b is not None else "/dev/null", n=context)
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n\\ No newline at end of file\n"
    diff = "".join(out)
    if max_chars is None or len(diff) <= max_chars:
        return diff
    cut = diff[:max_chars].rsplit("\n", 1)[0] + "\n"
    return f"{cut}... ({diff.count(chr(10)) - cut.count(chr(10))} more lines)\n"
