"""The two tiers of the suite: `make test` runs every test, `make test-fast` leaves out those
marked `slow` (pyproject.toml says which)."""

import pytest


def one_fast(cases):
  """The cases of a parametrized sweep with all but the first marked slow: the fast tier
  runs one of them, the full suite every one. A case is a value, or a tuple of values for
  several argument names."""
  cases = list(cases)
  return cases[:1] + [pytest.param(*(case if isinstance(case, tuple) else (case,)),
                                   marks=pytest.mark.slow) for case in cases[1:]]
