"""Metric families. Importing this package registers every built-in metric."""
from metrics import analysis, quality  # noqa: F401
from metrics import fvd, lpips  # noqa: F401  (rFVD/gFVD with the original I3D, LPIPS with the original weights)
from metrics import temporal  # noqa: F401  (tLP, tOF, warping error, temporal-difference error)
from metrics import vmaf  # noqa: F401  (VMAF v0.6.1 and NEG through vmaf-torch, issue 27)
