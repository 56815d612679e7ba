"""numpy, the one dependency of routing's inference (the ``route`` extra): a missing
numpy fails at import with its ``pip install`` line instead of a bare ImportError."""

from __future__ import annotations

from ._extras import missing_extra

try:
    import numpy as np
    import numpy.typing as npt
except ImportError:  # pragma: no cover - the dev extra has numpy
    raise missing_extra("numpy", "route", "routing (swarmbus.agents.routing)") from None

__all__ = ["Indices", "Vector", "np", "npt"]

Vector = npt.NDArray[np.float64]
Indices = npt.NDArray[np.intp]
