"""The three distribution functions the estimators need, from ``scipy.special``.

``scipy.stats`` computes these with the same special functions but costs
twice the import time, which every ``her2fed`` command (even ``--help``)
would pay.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import chdtrc, ndtr, ndtri


def z_two_sided(conf_level: float) -> float:
    """The normal quantile of a two-sided interval, e.g. 1.96 for 0.95."""
    return float(ndtri(0.5 + conf_level / 2))


def normal_sf(x: ArrayLike) -> NDArray[np.float64]:
    """Upper tail of the standard normal."""
    return np.asarray(ndtr(-np.asarray(x, dtype=np.float64)), dtype=np.float64)


def chi2_sf(stat: float, df: int) -> float:
    """Upper tail of the chi-square distribution with ``df`` degrees of freedom."""
    return float(chdtrc(df, stat))
