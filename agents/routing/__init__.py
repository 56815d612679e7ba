"""Routing: choose each step's model per task, from features of the task and the
step, learned from the swarm's own outcomes, and judged against simple baselines.

Baselines that need no data (``BestRouter``, ``CheapestRouter``, ``RandomRouter``,
``RuleRouter`` with ``Rule``s written in a workflow) and learned routers
(``KnnRouter``, ``LogisticRouter``) share one contract, ``Router.choose(features,
candidates, willingness_to_pay_usd=..., explore=..., rng=...) -> Decision``: the
candidate of the highest p_success - cost / willingness to pay, or with probability
``explore`` another one, with the propensity recorded. Learned routers are trained
from ``OutcomeRow``s (``train_knn``, ``train_logistic``: scikit-learn, the ``route``
extra), stored as JSON (``to_json``, ``load_router``: no pickle) and run with numpy
alone. ``evaluate_routers`` compares them on held-out runs split by time;
``should_activate`` says whether a learned router may replace the rules. Needs
numpy (``pip install 'swarmbus[route]'``; a ``MissingExtraError`` says so).
"""

from ._baselines import (
    OPERATORS,
    BestRouter,
    CheapestRouter,
    RandomRouter,
    Rule,
    RuleRouter,
    parse_rules,
)
from ._eval import (
    MIN_ROWS_PER_CANDIDATE,
    MIN_TEST_TASKS,
    ROW_NAMES,
    RouteReport,
    RouterResult,
    evaluate_routers,
    should_activate,
    task_key,
    time_split,
)
from ._features import DIM, Features, vectorize
from ._knn import SCHEMA, KnnRouter, train_knn
from ._logistic import LogisticRouter, fit_candidate, train_logistic
from ._report import plot_frontier, report_table
from ._router import Candidate, Decision, Router, Score, pick_best, with_utility
from ._rows import OutcomeRow, read_outcomes, write_outcomes
from ._store import load_router, select_router
from ._synthetic import (
    SYNTHETIC_MODELS,
    SYNTHETIC_RULES,
    ScriptedModel,
    SyntheticTask,
    synthetic_rows,
    synthetic_tasks,
)

__all__ = (
    "DIM",
    "MIN_ROWS_PER_CANDIDATE",
    "MIN_TEST_TASKS",
    "OPERATORS",
    "ROW_NAMES",
    "SCHEMA",
    "SYNTHETIC_MODELS",
    "SYNTHETIC_RULES",
    "BestRouter",
    "Candidate",
    "CheapestRouter",
    "Decision",
    "Features",
    "KnnRouter",
    "LogisticRouter",
    "OutcomeRow",
    "RandomRouter",
    "RouteReport",
    "Router",
    "RouterResult",
    "Rule",
    "RuleRouter",
    "Score",
    "ScriptedModel",
    "SyntheticTask",
    "evaluate_routers",
    "fit_candidate",
    "load_router",
    "parse_rules",
    "pick_best",
    "plot_frontier",
    "read_outcomes",
    "report_table",
    "select_router",
    "should_activate",
    "synthetic_rows",
    "synthetic_tasks",
    "task_key",
    "time_split",
    "train_knn",
    "train_logistic",
    "vectorize",
    "with_utility",
    "write_outcomes",
)
