"""The sandbox's configuration: which isolation, and the bounds of one run."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["DEFAULT_LIMITS", "Backend", "SandboxLimits"]

Backend = Literal["auto", "bubblewrap", "landlock"]


class SandboxLimits(BaseModel):
    """Isolation and bounds for one sandboxed test run (``sandbox:`` in ``swarm.yaml``).

    ``isolation``: ``bubblewrap`` requires bubblewrap (namespaces, an unprivileged uid
    without capabilities, Landlock and seccomp inside); ``landlock`` is the weaker
    backend (Landlock, seccomp and dropped capabilities, but no namespaces); ``auto``
    uses bubblewrap when it works here, else Landlock, else rlimits alone (the
    reviewer's start-up check refuses ``auto`` without bubblewrap for real models).

    Tree-wide bounds (``memory_mb``, ``max_processes``) are enforced by cgroups when the
    host lets us create one (root on cgroup v1, or a delegated cgroup v2 subtree);
    otherwise they fall back to per-process rlimits, and the isolation's description
    says so. ``disk_mb`` and ``max_inodes`` bound the box (the only writable place:
    the work directory, ``HOME``, ``/tmp`` and ``/dev/shm``) under bubblewrap.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    isolation: Backend = Field("auto", description="bubblewrap, landlock, or the best here.")
    timeout_s: float = Field(60.0, gt=0, description="Wall clock; then the whole tree dies.")
    cpu_s: int = Field(60, gt=0, description="CPU seconds per process (RLIMIT_CPU).")
    memory_mb: int = Field(
        1024, ge=64, description="MiB for the whole tree (cgroup) and per process (RLIMIT_AS)."
    )
    max_processes: int = Field(
        64, ge=4, description="Tasks (processes and threads) in the tree at once, runner included."
    )
    disk_mb: int = Field(256, ge=8, description="MiB the box may hold (files, /tmp, /dev/shm).")
    max_inodes: int = Field(20_000, ge=100, description="Files and directories in the box.")
    file_size_mb: int = Field(16, gt=0, description="Largest file a process may write.")
    max_output_bytes: int = Field(64_000, ge=1024, description="Head and tail are kept.")
    max_files: int = Field(200, gt=0, description="Files in one submission.")
    max_total_bytes: int = Field(5_000_000, gt=0, description="Submitted bytes in all.")
    max_open_files: int = Field(256, ge=32)
    allow_network: bool = Field(
        False, description="Share the host's network (loopback services included)."
    )
    pytest_plugins: tuple[str, ...] = Field((), description="Plugins for -p (no autoload).")
    bwrap_path: str | None = Field(None, description="The bwrap executable; None: bwrap on PATH.")

    @model_validator(mode="after")
    def _box_holds_the_submission(self) -> Self:
        if self.max_total_bytes > self.disk_mb << 20:
            raise ValueError(
                f"max_total_bytes ({self.max_total_bytes}) exceeds disk_mb ({self.disk_mb} MiB): "
                "the submission must fit in the box"
            )
        return self


DEFAULT_LIMITS = SandboxLimits()
