"""Summary statistics of repeated runs (seeds)."""

from __future__ import annotations

import math

import numpy as np


def mean_se(values) -> tuple[float, float | None]:
  """Mean and standard error (sample std / sqrt(n); None for one value)."""
  values = np.asarray(values, dtype=np.float64)
  if len(values) < 2:
    return float(values.mean()), None
  return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))
