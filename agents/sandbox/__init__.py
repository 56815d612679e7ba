"""The executable-review sandbox: run model-written pytest suites without trusting them.

What it promises, against a submission that is actively hostile (its code and tests are
written by a model that may be adversarial or compromised), when bubblewrap is used:

- isolation: new user (or, for a root daemon, an unprivileged uid and no capabilities),
  PID, network, IPC, UTS and mount namespaces; the filesystem is a read-only view of
  the interpreter, its packages and system libraries, a minimal ``/dev`` and ``/etc``,
  and a writable box (a tmpfs with a size and an inode limit). No host network, no host
  processes, no secrets in the environment. Landlock and a seccomp filter apply inside
  as a second layer;
- the whole tree dies: on timeout, cancellation or exit, the PID namespace's init (and
  the run's cgroup, when the host allows one) takes every descendant with it, whatever
  it did to its session, group or environment;
- tree-wide memory and process limits (cgroups, where the host allows them), CPU,
  address space and file size per process, and a wall-clock timeout;
- the parent never reads a path the child can influence: results travel on pipes,
  cleanup walks by file descriptor without following links;
- honest reports: ``TestReport.ok`` is never true with zero tests passed; the counts are
  marked as reported by the submission's own process; acceptance runs need a per-run
  token that the submitted code never sees before the checks ran.

What it does not promise: protection from kernel exploits beyond what seccomp removes,
secrecy of the installed packages and system libraries it shows read-only, or a verdict
that a submission which introspects the test runner cannot forge. ``isolation:
landlock`` (no namespaces) and hosts without cgroups are weaker: ``Isolation.gaps``
lists what they do not isolate.
"""

from ._errors import SandboxUnavailableError
from ._fs import remove_tree
from ._isolation import Isolation, check_isolation, install_hint, landlock_abi
from ._limits import DEFAULT_LIMITS, Backend, SandboxLimits
from ._run import run_acceptance, run_tests


def describe_isolation(limits: SandboxLimits = DEFAULT_LIMITS, *, untrusted: bool = False) -> str:
    """One line saying how runs with ``limits`` are isolated on this host (what
    ``TestReport.isolation`` will say). Raises ``SandboxUnavailableError`` like
    ``check_isolation`` when the required backend is missing."""
    return check_isolation(limits, untrusted=untrusted).describe()


__all__ = (
    "DEFAULT_LIMITS",
    "Backend",
    "Isolation",
    "SandboxLimits",
    "SandboxUnavailableError",
    "check_isolation",
    "describe_isolation",
    "install_hint",
    "landlock_abi",
    "remove_tree",
    "run_acceptance",
    "run_tests",
)
