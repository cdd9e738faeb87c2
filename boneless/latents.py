"""Latent data: the ideal denoiser over autoencoder latents ``[N, C, h, w]``, samples decoded to images.

``boneless sample --data latents.npy --decode VAE_DIR`` samples latents with the exact flow and decodes them
(and their nearest training latents) with a diffusers ``AutoencoderKL`` read from a local folder. The latents
are taken in diffusers' convention, ``z = (encode(x) - shift_factor) * scaling_factor``, so they are decoded as
``decode(z / scaling_factor + shift_factor)`` with the factors of the autoencoder's config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch


def load_decoder(folder: str | Path, X: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``decode(z) -> images`` [n, 3, H, W] in [-1, 1] from the ``AutoencoderKL`` in ``folder`` (or its ``vae/``),
    checked at once on one latent of ``X`` (so a wrong folder fails before a long run)."""
    from .train_reference import diffusers_module

    path = Path(folder).expanduser()
    if (path / "vae" / "config.json").is_file():
        path = path / "vae"
    if not (path / "config.json").is_file():
        raise ValueError(f"--decode {folder}: no autoencoder there (expected a diffusers AutoencoderKL folder with "
                         "config.json)")
    if X.ndim != 4:
        raise ValueError(f"--decode needs latent images [N, C, h, w], got data of shape {list(X.shape)}")
    diffusers = diffusers_module()
    try:
        vae = diffusers.AutoencoderKL.from_pretrained(path, low_cpu_mem_usage=False).eval()
    except Exception as e:  # malformed config, missing or corrupt weights: many types
        raise ValueError(f"--decode {folder}: cannot load the autoencoder: {' '.join(str(e).split())[:300]}") from None
    channels = vae.config.latent_channels
    if X.shape[1] != channels:
        raise ValueError(f"--decode {folder}: the autoencoder's latents have {channels} channels, the data "
                         f"{X.shape[1]}")
    scale = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)

    def decode(z: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        with torch.no_grad():
            images = [vae.decode(z[i:i + batch_size].float() / scale + shift).sample
                      for i in range(0, len(z), batch_size)]
        return torch.cat(images).clamp(-1, 1)

    decode(X[:1])
    return decode


def write_decoded(out: Path, decode, samples: torch.Tensor, X: torch.Tensor, nearest_idx: torch.Tensor) -> None:
    """``decoded.png`` (the samples decoded) and ``decoded_neighbours.png`` (each decoded sample above its
    nearest training latent, decoded)."""
    from .plots import neighbours_grid, samples_grid, save_image

    images = decode(samples)
    save_image(samples_grid(images), out / "decoded.png")
    m = min(16, len(samples))
    neighbours = decode(X[nearest_idx[:m]])
    save_image(neighbours_grid(images[:m], neighbours, torch.arange(m)), out / "decoded_neighbours.png")
