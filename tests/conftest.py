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
WORST_CASE: dict[str, tuple[float, dict]] = {}  # property name -> its worst error and the drawn case, to run again


def record(name: str, errors: list[float], case: dict | None = None) -> None:
    """Note one case's relative errors under the property ``name`` (and the case, when it is the worst so far)."""
    EXACTNESS.setdefault(name, []).append(errors)
    if case is not None and errors and max(errors) > WORST_CASE.get(name, (-1.0, None))[0]:
        WORST_CASE[name] = (max(errors), case)


def pytest_terminal_summary(terminalreporter):
    for name, cases in sorted(EXACTNESS.items()):
        if cases:
            errors = [e for case in cases for e in case]
            terminalreporter.write_line(f"exactness {name}: {len(cases)} cases, {len(errors)} queries, worst "
                                        f"relative L2 error {max(errors):.3g} (contract 1e-4)")
            if name in WORST_CASE:
                terminalreporter.write_line(f"  worst case: {WORST_CASE[name][1]}")
