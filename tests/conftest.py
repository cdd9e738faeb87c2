"""Hypothesis profiles: ``ci`` (the default: a fixed, derandomised set of examples, fast enough for CI) and
``thorough`` (many more, random): ``python -m pytest tests/test_exactness.py --hypothesis-profile thorough``.
The exactness properties record their errors; the run's summary states how many cases ran and the worst one."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=400, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=2000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

EXACTNESS: dict[str, list[list[float]]] = {}  # property name -> per case, the relative errors of its queries


def pytest_terminal_summary(terminalreporter):
    for name, cases in sorted(EXACTNESS.items()):
        if cases:
            errors = [e for case in cases for e in case]
            terminalreporter.write_line(f"exactness {name}: {len(cases)} cases, {len(errors)} queries, worst "
                                        f"relative L2 error {max(errors):.3g} (contract 1e-4)")
