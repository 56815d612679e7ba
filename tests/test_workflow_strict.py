"""Every YAML file the project reads is read strictly, and ``workflow check`` resolves
models exactly as ``swarmbus up`` builds them.

Strict: a key given twice is refused with the key and both lines (workflow files in
the long and the short form, ``swarm.yaml``, a ``SWARMBUS_*`` value), through the
usual one-line errors; keys are the words as written, and only ``true``/``false`` are
booleans, so routes ``yes:``/``no:`` and step ids ``on``/``off`` stay words.
Models: an unknown provider fails the check with the nearest one, with no key read;
an unpriced model, or a vendor model id the price table lacks, is a warning."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel

from swarmbus.agents.app import build_agents, load_config
from swarmbus.agents.app import main as cli_main
from swarmbus.agents.models import (
    MissingAPIKeyError,
    PriceTable,
    ScriptedModel,
    UnknownModelError,
    build_model,
    check_model,
    price_for,
    register_provider,
    set_price,
    unregister_provider,
    using_prices,
)
from swarmbus.agents.workflow import ModelCheck, builtin_workflows, check_models, load_workflow
from swarmbus.protocols import ConfigError, Edge, Finish, Goto, WorkflowError, route

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "workflows"
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


@pytest.fixture
def own_prices() -> Iterator[PriceTable]:
    """The shipped prices, in a table of the test's own (its set_price calls do not leak)."""
    with using_prices(PriceTable.shipped(environ=False)) as table:
        yield table


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


# -- models, resolved as `up` builds them ----------------------------------------------------


def test_an_unknown_provider_fails_check_and_up_with_the_near_name_and_no_key(
    tmp_path: Path, no_keys: None
) -> None:
    text = "workflow:\n- role: coder\n  model: opnai:gpt-4o\n"
    bad = write(tmp_path, "wf.yaml", text)
    wf = load_workflow(bad)  # Python leaves names to the builder (team(..., build=...))
    (problem,) = check_models(wf).errors
    assert problem.path == "steps[0].model"
    assert problem.message.startswith(
        "unknown model provider 'opnai' in 'opnai:gpt-4o'. Did you mean 'openai'?")
    with pytest.raises(UnknownModelError) as built:  # the same words from the same lookup
        build_model("opnai:gpt-4o")
    assert str(built.value) == problem.message
    assert check_models(str(bad)) == check_models(wf)  # from the file alike
    code, out, err = run_cli("workflow", "check", str(bad))
    assert (code, out) == (2, "")
    assert err == f"error: invalid workflow {bad}: steps[0].model: {problem.message}\n"
    # `swarmbus up` runs the same check before building anything.
    with pytest.raises(WorkflowError) as refused:
        build_agents(load_config(None, environ={}, workflow=str(bad)))
    assert str(refused.value) == err.removeprefix("error: ").rstrip("\n")
    assert build_agents(load_config(None, environ={}, workflow=str(bad), offline=True))
    # The right provider checks with no key set; building it needs the key.
    good = write(tmp_path, "ok.yaml", text.replace("opnai", "openai"))
    assert check_models(good) == ModelCheck([], [])
    with pytest.raises(MissingAPIKeyError):
        build_model("openai:gpt-4o")
    # A server that needs a base_url is refused by both alike.
    compat = write(tmp_path, "compat.yaml", text.replace("opnai:gpt-4o", "openai-compatible:m"))
    (needs,) = check_models(compat).errors
    assert needs.message.startswith("'openai-compatible:m' needs a base_url")
    with pytest.raises(UnknownModelError, match="needs a base_url"):
        build_model("openai-compatible:m")


def test_errors_of_both_kinds_are_said_together(tmp_path: Path) -> None:
    bad = write(tmp_path, "wf.yaml", "workflow:\n- role: coder\n  model: opnai:gpt-4o\n"
                "- role: reviewer\n  input: nothing\n")
    code, _, err = run_cli("workflow", "check", str(bad))
    assert code == 2 and err.startswith(f"error: invalid workflow {bad}:\n")
    assert "  steps[0].model: unknown model provider 'opnai'" in err
    assert "  steps[1].input: " in err


def test_a_provider_registered_at_run_time_checks_and_its_removal_fails(tmp_path: Path) -> None:
    wf = load_workflow(write(tmp_path, "wf.yaml", "workflow:\n- role: coder\n  model: acme:m\n"))
    assert "unknown model provider 'acme'" in check_models(wf).errors[0].message
    register_provider("acme", lambda spec: ScriptedModel([], name=spec.name))
    try:
        assert check_models(wf) == ModelCheck([], [])  # its names and prices are its own
    finally:
        unregister_provider("acme")
    assert "unknown model provider 'acme'" in check_models(wf).errors[0].message


MODELS = """\
workflow:
- role: architect
  model: gemini-2.5-pro
- role: coder
  input: design
  model: openai:gpt-4oo
- role: reviewer
  input: design + code
  model: [anthropic:claude-haiku-4-5, ollama:llama3.1]
- role: tester
  input: code
  model: {{name: 'ollama:llama3.1', price: {{input: 0, output: 0}}}}
{extra}"""


def test_unpriced_and_unknown_vendor_models_are_warnings(
    tmp_path: Path, own_prices: PriceTable
) -> None:
    path = write(tmp_path, "wf.yaml", MODELS.format(extra=""))
    wf = load_workflow(path)
    errors, warnings = check_models(wf)  # they do not fail the check
    assert errors == []
    assert [w.path for w in warnings] == ["steps[1].model", "steps[2].model"]
    typo, local = (w.message for w in warnings)
    assert typo.startswith("'openai:gpt-4oo' is not a model the price table lists for openai "
                           "(did you mean 'gpt-4o'?)")
    assert "runs, unpriced" in typo
    assert local.startswith("'ollama:llama3.1' has no price: its calls are counted as "
                            "unpriced")
    assert check_models(load_workflow("builtin:code-review")) == ModelCheck([], [])
    # Priced in the table (SWARMBUS_PRICES_FILE, set_price), the warning goes.
    set_price("openai:gpt-4oo", input=1, output=2)
    assert [w.path for w in check_models(wf).warnings] == ["steps[2].model"]
    # check_model is the same check for any model config.
    assert check_model("gemini:gemini-2.5-flash") == []
    assert check_model("openai:gpt-4o-2024-08-06") == []  # a snapshot of a listed model
    (nearest,) = check_model("anthropic:claude-3.5-sonnet")
    assert "(did you mean 'claude-sonnet-4-5'?)" in nearest


def test_check_prints_warnings_after_the_ok_line_or_with_the_errors(
    tmp_path: Path, own_prices: PriceTable
) -> None:
    path = write(tmp_path, "wf.yaml", MODELS.format(extra=""))
    code, out, err = run_cli("workflow", "check", str(path))
    assert code == 0
    assert out.startswith(f"{path}: workflow wf checks (4 steps;")
    lines = err.splitlines()
    assert [ln.split(": ", 3)[:3] for ln in lines] == [
        ["warning", str(path), "steps[1].model"], ["warning", str(path), "steps[2].model"]]
    # With an error too: the warnings, then the one error line; exit 2.
    broken = write(tmp_path, "broken.yaml", MODELS.format(
        extra="- role: auditor\n  input: code\n  model: opnai:gpt-4o\n"))
    code, out, err = run_cli("workflow", "check", str(broken))
    assert (code, out) == (2, "")
    *warned, last = err.splitlines()
    assert [w.split(": ", 3)[2] for w in warned] == ["steps[1].model", "steps[2].model"]
    assert last.startswith(f"error: invalid workflow {broken}: steps[4].model: unknown model "
                           "provider 'opnai'")


# -- the examples ----------------------------------------------------------------------------


def test_the_examples_run_on_priced_vendor_models_and_the_readme_shows_the_seed() -> None:
    sources: list[str | Path] = [*sorted(EXAMPLES.glob("*.yaml")), *builtin_workflows()]
    for source in sources:
        wf = load_workflow(source)
        assert check_models(wf) == ModelCheck([], []), source
        for step in wf.spec.steps:
            assert step.model is None or price_for(str(step.model)) is not None, step.model
    seed = (EXAMPLES / "seed.yaml").read_text()
    readme = (ROOT / "README.md").read_text()
    body = "".join(ln + "\n" for ln in seed.splitlines() if not ln.startswith("#"))
    assert f"```yaml\n{body}```" in readme
    assert [s.model for s in load_workflow(EXAMPLES / "seed.yaml").spec.steps] == [
        "google:gemini-2.5-pro", "openai:gpt-4o", "anthropic:claude-sonnet-4-5"]
