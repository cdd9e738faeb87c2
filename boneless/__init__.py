"""Boneless Flow: the exact ground-truth flow of diffusion models, and closed-form denoisers. No training."""

__version__ = "0.1.0"

from .schedules import Coeffs, SCHEDULES, get_schedule, time_grid  # noqa: E402
from .denoisers import EmpiricalDenoiser, Posterior, eps_from_x0, score_from_x0, velocity_from_x0  # noqa: E402
from .registry import DENOISERS, make_denoiser  # noqa: E402
from .samplers import SAMPLERS, Knobs, SampleResult, sample  # noqa: E402
from .data import DATASETS, load_dataset  # noqa: E402

__all__ = ["Coeffs", "SCHEDULES", "get_schedule", "time_grid", "EmpiricalDenoiser", "Posterior", "eps_from_x0",
           "score_from_x0", "velocity_from_x0", "DENOISERS", "make_denoiser", "SAMPLERS", "Knobs", "SampleResult",
           "sample", "DATASETS", "load_dataset"]
