"""Boneless Flow: the exact ground-truth flow of diffusion models, and closed-form denoisers. No training."""

from .schedules import Coeffs, SCHEDULES, get_schedule, time_grid
from .denoisers import DENOISERS, EmpiricalDenoiser, Posterior, eps_from_x0, score_from_x0, velocity_from_x0

__version__ = "0.1.0"
from .samplers import SAMPLERS, Knobs, SampleResult, sample
from .data import DATASETS, load_dataset
