"""Every YAML file the project reads is read strictly: a key given twice is refused
with the key and both lines (workflow files in the long and the short form,
``swarm.yaml``, a ``SWARMBUS_*`` value), through the usual one-line errors; keys are
the words as written, and only ``true``/``false`` are booleans, so routes
``yes:``/``no:`` and step ids ``on``/``off`` stay words."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel

from swarmbus.agents.app import load_config
from swarmbus.agents.app import main as cli_main
from swarmbus.agents.workflow import load_workflow
from swarmbus.protocols import ConfigError, Edge, Finish, Goto, WorkflowError, route

SWARMBUS = [sys.executable, "-m", "swarmbus.agents.app"]


class Answer(BaseModel):
    """An output whose routing field takes the words YAML 1.1 reads as booleans."""

    answer: Literal["yes", "no", "true", "1"]
    summary: str = ""


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli_main(list(args))
    return code, out.getvalue(), err.getvalue()


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """The 1-based line of the ``nth`` line holding ``needle``."""
    lines = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return lines[nth - 1]


# -- a key given twice -----------------------------------------------------------------------

LONG = """\
schema: swarmbus.workflow/v1
name: strict
steps:
- id: implement
  role: coder
- id: review
  role: reviewer
  input: code
  routes:
    approve: end
    revise_code:
      to: implement
      max: 1
{again}    revise_design: end
"""


def test_a_route_key_given_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", LONG.format(again=""))
    assert load_workflow(good).steps["review"].routes["revise_code"] == Edge(to="implement",
                                                                            max=1)
    text = LONG.format(again="      max: 5\n")
    bad = write(tmp_path, "bad.yaml", text)
    with pytest.raises(WorkflowError) as caught:
        load_workflow(bad)
    first, again = line_of(text, "max: 1"), line_of(text, "max: 5")
    assert (first, again) == (13, 14)
    assert str(caught.value) == (
        f"invalid workflow {bad}: not valid YAML: duplicate key 'max' at line 14 "
        "(first at line 13)")
    code, out, err = run_cli("workflow", "check", str(bad))
    assert (code, out) == (2, "")
    assert err == f"error: {caught.value}\n"  # one line, nothing before it


@pytest.mark.parametrize(("case", "text", "key", "first", "again"), [
    ("a route twice", LONG.format(again="    revise_code: {to: implement, max: 5}\n"),
     "revise_code", 11, 14),
    ("a top-level key twice", LONG.format(again="") + "name: other\n", "name", 2, 15),
    ("a step key twice", LONG.format(again="").replace(
        "  role: coder\n", "  role: coder\n  role: architect\n"), "role", 5, 6),
])
def test_every_key_given_twice_in_the_long_form_is_refused(
    tmp_path: Path, case: str, text: str, key: str, first: int, again: int
) -> None:
    bad = write(tmp_path, "wf.yaml", text)
    with pytest.raises(WorkflowError) as caught:
        load_workflow(bad)
    assert str(caught.value).endswith(
        f": not valid YAML: duplicate key {key!r} at line {again} (first at line {first})"), case


def test_a_model_given_twice_in_a_short_form_step_is_refused(tmp_path: Path) -> None:
    text = ("workflow:\n- role: architect\n  model: gemini-2.5-pro\n"
            "- role: coder\n  input: design\n  model: gpt-4o\n  model: gpt-5\n")
    bad = write(tmp_path, "short.yaml", text)
    with pytest.raises(WorkflowError, match=re.escape(
            "duplicate key 'model' at line 7 (first at line 6)")):
        load_workflow(bad)
    # Written once, the last one is what the step runs on.
    good = write(tmp_path, "short_ok.yaml", text.replace("  model: gpt-4o\n", ""))
    assert load_workflow(good).steps["coder"].model == "openai:gpt-5"


def test_a_flow_mapping_names_the_columns(tmp_path: Path) -> None:
    bad = write(tmp_path, "flow.yaml", "steps:\n- {id: a, role: coder, id: b}\n")
    with pytest.raises(WorkflowError, match=re.escape(
            "duplicate key 'id' at line 2, column 24 (first at column 4)")):
        load_workflow(bad)


def test_a_role_given_twice_in_swarm_yaml_is_refused(tmp_path: Path) -> None:
    text = ("namespace: strict\nroles:\n  coder: {model: 'openai:gpt-4o'}\n"
            "  reviewer: {model: 'openai:gpt-4o'}\n  coder: {model: 'ollama:llama3.1'}\n")
    path = write(tmp_path, "swarm.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value) == (
        f"{path} is not valid YAML: duplicate key 'coder' at line 5 (first at line 3)")
    top = write(tmp_path, "top.yaml", "namespace: a\ngrace_s: 3\nnamespace: b\n")
    with pytest.raises(ConfigError, match=re.escape(
            "duplicate key 'namespace' at line 3 (first at line 1)")):
        load_config(top, environ={})
    # `swarmbus up` says it in one line, exit 2, before starting anything.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMBUS_")}
    proc = subprocess.run([*SWARMBUS, "up", "-c", str(path), "--port", "9"],
                          capture_output=True, text=True, timeout=60, check=False, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"error: {caught.value}\n"


def test_a_key_given_twice_in_an_environment_value_is_refused_naming_the_variable() -> None:
    raw = "{coder: {model: 'openai:gpt-4o'}, coder: {model: 'ollama:llama3.1'}}"
    again = raw.index("coder", 2) + 1
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ={"SWARMBUS_ROLES": raw})
    assert str(caught.value) == (
        f"SWARMBUS_ROLES: duplicate key 'coder' at line 1, column {again} (first at column 2)")
    # Written once it is read, as before.
    cfg = load_config(None, environ={"SWARMBUS_ROLES": "{coder: {model: 'openai:gpt-4o'}}"})
    assert cfg.roles["coder"].model == "openai:gpt-4o"


# -- words stay words ------------------------------------------------------------------------

WORDS = f"""\
artifacts:
  answer: {__name__}:Answer
  note: swarmbus.Text
steps:
- id: on
  role: asker
  output: answer
  route_on: answer
  routes:
    yes: end
    no: {{to: off, max: 2}}
    true: end
    1: end
- id: off
  role: fixer
  input: answer
  output: note
  next: on
"""


def test_boolean_words_are_route_names_and_step_ids(tmp_path: Path) -> None:
    wf = load_workflow(write(tmp_path, "words.yaml", WORDS))
    assert [s.id for s in wf.spec.steps] == ["on", "off"]
    assert wf.steps["on"].routes == {"yes": Edge(to="end"), "no": Edge(to="off", max=2),
                                     "true": Edge(to="end"), "1": Edge(to="end")}
    assert wf.steps["off"].next == "on"
    assert route(wf, "on", Answer(answer="no"), {}) == Goto("off", "on.no", capped=True)
    assert route(wf, "on", Answer(answer="no"), {"on.no": 2}) == Finish(
        "rounds_exhausted", "on.no taken 2 times (cap 2)", "on.no")
    assert route(wf, "on", Answer(answer="yes", summary="fine"), {}) == Finish(
        "approved", "fine", "on.yes")
    assert route(wf, "off", {"text": "x"}, {}) == Goto("on", "off.next")
    # The same file in the short form.
    short = WORDS.replace("steps:\n", "workflow:\n")
    assert load_workflow(write(tmp_path, "words_short.yaml", short)).spec.steps[0].id == "on"


def test_only_true_and_false_are_booleans(tmp_path: Path) -> None:
    # A word where a string goes is that word (`no` was False: "Input should be a valid
    # string"); true/false are still booleans there, and refused as such.
    ok = write(tmp_path, "ok.yaml", "description: no\nsteps:\n- {id: a, role: coder}\n")
    assert load_workflow(ok).spec.description == "no"
    bad = write(tmp_path, "bad.yaml", "description: true\nsteps:\n- {id: a, role: coder}\n")
    with pytest.raises(WorkflowError, match="description: Input should be a valid string"):
        load_workflow(bad)
    # A bool setting still takes yes/no/on/off (pydantic reads the words), and true/false.
    path = write(tmp_path, "swarm.yaml", "cache: {enabled: no, share_across_workflows: on}\n"
                 "offline: TRUE\nroles:\n  yes: {run: off}\n")
    cfg = load_config(path, environ={})
    assert (cfg.cache.enabled, cfg.cache.share_across_workflows, cfg.offline) == (
        False, True, True)
    assert cfg.roles["yes"].run is False  # a role named `yes`, not True
    env = load_config(None, environ={"SWARMBUS_CACHE": "{enabled: no}",
                                     "SWARMBUS_ROLES": "{on: {run: true}}"})
    assert env.cache.enabled is False and env.roles["on"].run is True
