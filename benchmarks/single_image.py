"""Measurements for docs/SINGLE_IMAGE.md: quality (SIFID, diversity, copy share) of `boneless single-image` against
two baselines on scikit-image's bundled pictures, and its speed for 256 x 256 and 1024 x 1024 samples.

    OMP_NUM_THREADS=1 python benchmarks/single_image.py quality --out docs/single_image
    /work/bin/quiet python benchmarks/single_image.py speed --out docs/single_image --previous 1cc7727

Every picture is read offline from scikit-image (``skimage.data``) and resized (Lanczos) to a longer side of 256
pixels (``quality``; the usual SinGAN/SinDDM size) or 256 and 512 (``speed``). Baselines: the source circularly
shifted by a random offset (the trivial copy) and coarse-to-fine patch nearest-neighbour reshuffling in the manner
of GPNN (the classical method), with the same patch size, pyramid and query-patch stride as ours.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from boneless.plots import atomic_path, image_grid, save_image
from boneless.single_image import (SAMPLER, WINDOW, copy_share, diversity, generate, load_source,
                                   nearest_patch_reshuffle, random_shifts, resize, sifid)

IMAGES = ("astronaut", "chelsea", "coffee", "immunohistochemistry", "hubble_deep_field")


def source_image(name: str, side: int, folder: Path) -> Path:
    """``skimage.data.<name>()`` resized to a longer side of ``side`` pixels, written as PNG (read back as the
    command line reads it)."""
    import skimage.data
    im = Image.fromarray(getattr(skimage.data, name)())
    s = side / max(im.size)
    im = im.resize((round(im.width * s), round(im.height * s)), Image.LANCZOS)
    path = folder / f"{name}_{side}.png"
    im.save(path)
    return path


ROWS = ("source", "ours", "nearest patch", "random shift")


def label_rows(path: Path, labels=ROWS, *, tile: int, pad: int = 2, title: str | None = None) -> None:
    """Rewrite the grid at ``path`` (rows of ``tile`` px plus ``pad``) with each row's label on its left and a
    title on top."""
    from PIL import ImageDraw
    im = Image.open(path).convert("RGB")
    left, top = 110, 22 if title else 0
    canvas = Image.new("RGB", (im.width + left, im.height + top), "white")
    canvas.paste(im, (left, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 4), title, fill="black")
    for r, text in enumerate(labels):
        draw.text((4, top + pad + r * (tile + pad) + tile // 2 - 6), text, fill="black")
    save_image(canvas, path)


def scores(samples: torch.Tensor, source: torch.Tensor) -> dict:
    return {"sifid": float(np.mean([sifid(s, source) for s in samples])),
            "diversity": diversity(samples, source),
            "copy_share": float(np.mean([copy_share(s, source, value_range=2.0) for s in samples]))}


def quality(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.gettempdir()) / "single_image_sources"  # the resized inputs, not kept
    tmp.mkdir(exist_ok=True)
    results = {}
    for name in args.images:
        source, _ = load_source(source_image(name, 256, tmp))
        row = {}
        t0 = time.perf_counter()
        ours = generate(source, n=args.n, seed=args.seed, start_noise=args.start_noise, window=args.window,
                        sampler=args.sampler).samples
        row["ours"] = {**scores(ours, source), "seconds": time.perf_counter() - t0}
        if args.only_ours:  # a variant of our settings: no baselines, no pictures
            results[name] = row
            print(name, json.dumps(row), flush=True)
            continue
        t0 = time.perf_counter()
        nn = nearest_patch_reshuffle(source, n=args.n, stride=3, seed=args.seed)
        row["nearest-patch"] = {**scores(nn, source), "seconds": time.perf_counter() - t0}
        copy = random_shifts(source, n=args.n, seed=args.seed)
        row["random-shift"] = {**scores(copy, source), "seconds": 0.0}
        results[name] = row
        print(name, json.dumps(row), flush=True)
        half = lambda x: resize(x, (x.shape[2] // 2, x.shape[3] // 2)).clamp(-1, 1)
        k = min(3, args.n)
        grid = image_grid([half(source[None]).expand(1, -1, -1, -1), half(ours[:k]), half(nn[:k]), half(copy[:k])],
                          min_width=0)
        save_image(grid, out / f"{name}.png")
        label_rows(out / f"{name}.png", tile=source.shape[1] // 2,
                   title=f"{name}: source, then {k} samples of each method (half size)")
    if args.only_ours:
        report = {"images": list(args.images), "n": args.n, "seed": args.seed, "start_noise": args.start_noise,
                  "window": args.window, "sampler": args.sampler,
                  "per_image": results,
                  "mean": {"ours": {k: float(np.mean([results[i]["ours"][k] for i in args.images]))
                                    for k in ("sifid", "diversity", "copy_share")}}}
        name = f"quality_start_noise_{args.start_noise}_window_{args.window:g}_{args.sampler}.json"
        with atomic_path(out / name) as t:
            Path(t).write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report["mean"], indent=2))
        return
    # retargeting: one picture at two other aspect ratios
    source, _ = load_source(source_image("coffee", 256, tmp))
    wide = generate(source, size=(128, 384), n=2, seed=args.seed).samples
    tall = generate(source, size=(256, 128), n=2, seed=args.seed).samples
    save_image(image_grid([wide.clamp(-1, 1)], min_width=0), out / "retarget_wide.png")
    save_image(image_grid([tall.clamp(-1, 1)], min_width=0), out / "retarget_tall.png")
    results["retarget_coffee"] = {"wide_128x384": scores(wide, source), "tall_256x128": scores(tall, source)}
    summary = {m: {k: float(np.mean([results[i][m][k] for i in args.images])) for k in ("sifid", "diversity",
                                                                                        "copy_share")}
               for m in ("ours", "nearest-patch", "random-shift")}
    report = {"images": list(args.images), "n": args.n, "seed": args.seed, "per_image": results, "mean": summary,
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "cpus": os.cpu_count()}}
    with atomic_path(out / "quality.json") as t:
        Path(t).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def timed(fn):
    """(result, wall seconds, CPU seconds of this process)."""
    w, c = time.perf_counter(), time.process_time()
    r = fn()
    return r, time.perf_counter() - w, time.process_time() - c


def previous_module(commit: str):
    """``boneless/single_image.py`` as it was at ``commit`` (git), imported as a module of the package: the
    implementation being replaced, run side by side with the current one."""
    import importlib.util
    import subprocess
    import sys
    import boneless
    code = subprocess.run(["git", "show", f"{commit}:boneless/single_image.py"], check=True, capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parent.parent).stdout
    path = Path(tempfile.mkdtemp()) / "single_image_previous.py"
    path.write_text(code)
    name = f"{boneless.__name__}.single_image_previous"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def speed(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.gettempdir()) / "single_image_sources"  # the resized inputs, not kept
    tmp.mkdir(exist_ok=True)
    src256, _ = load_source(source_image("astronaut", 256, tmp))
    src512, _ = load_source(source_image("astronaut", 512, tmp))
    previous = previous_module(args.previous) if args.previous else None
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        cases = [("256x256 from 256x256", src256, (256, 256), generate, "current"),
                 ("1024x1024 from 512x512", src512, (1024, 1024), generate, "current")]
        if previous is not None:  # the replaced implementation, side by side (256 x 256 only: minutes at 1024)
            cases.insert(1, ("256x256 from 256x256", src256, (256, 256), previous.generate, args.previous))
        for label, src, size, gen, code in cases:
            res, wall, cpu = timed(lambda: gen(src, size=size, n=1, seed=args.seed))
            rows.append({"case": label, "code": code, "threads": threads, "wall_s": wall, "cpu_s": cpu,
                         "per_scale_s": res.seconds,
                         "checked_error_per_scale": [None if e is None else
                                                     {"max": float(e.max()), "mean": float(e.mean())}
                                                     for e in res.errors]})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "checked_error_per_scale"}), flush=True)
            if size == (1024, 1024) and threads == args.threads[0]:
                save_image(image_grid([resize(res.samples, (512, 512)).clamp(-1, 1)], min_width=0),
                           out / "astronaut_1024_half.png")
    report = {"runs": rows,
              "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                          "load_average_at_end": os.getloadavg()}}
    with atomic_path(out / "speed.json") as t:
        Path(t).write_text(json.dumps(report, indent=2) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--out", default="docs/single_image")
    q.add_argument("--images", nargs="+", default=list(IMAGES))
    q.add_argument("-n", type=int, default=4)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--start-noise", type=float, default=0.35, help="our start noise for every scale after the coarsest")
    q.add_argument("--window", type=float, default=WINDOW, help="our aggregation window (pixels; 0: plain mean)")
    q.add_argument("--sampler", default=SAMPLER, help="our sampler")
    q.add_argument("--only-ours", action="store_true", help="only our samples (a settings variant): a json, no pictures")
    s = sub.add_parser("speed")
    s.add_argument("--out", default="docs/single_image")
    s.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    s.add_argument("--previous", metavar="COMMIT",
                   help="also time boneless/single_image.py at this git commit (256 x 256)")
    s.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    quality(args) if args.what == "quality" else speed(args)


if __name__ == "__main__":
    main()
