"""The seconds of each denoiser and stage of a `boneless eval` run (its results.json), as a markdown table, and
their linear extrapolation to the default sizes: held-out x 500 / --test, in-sample x 100 / --in-sample,
sampling x 32 / --samples, split consistency: the second pool's build (the row's own build time; 0 where the
row's build was shared) + the rest x 8 / --consistency. Linear in the images, so an upper bound where a call
has a fixed cost (the patch denoisers' per-call work): at the default batch sizes it is spread over more
images. The probe is what is left of the row's total."""

import json
import sys


def main(path: str) -> None:
    r = json.load(open(path))
    s = r["settings"]
    f_held, f_in = 500 / s["test"], 100 / s["in_sample"]
    f_samp, f_cons = 32 / s["samples"], 8 / max(s["consistency"], 1)
    print("| denoiser | build | probe | held-out | sampling | in-sample | split consistency | total | "
          "extrapolated to the default sizes |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    total = extrapolated = 0.0
    for name, rec in r["denoisers"].items():
        t = rec["timings"]
        b, h, sa, i_, c = (t.get(k, 0.0) for k in ("build_s", "held_out_error_s", "sampling_s", "in_sample_error_s",
                                                     "split_consistency_s"))
        probe = max(t["total_s"] - b - h - sa - i_ - c, 0.0)
        second = min(b, c)
        ext = b + probe + h * f_held + sa * f_samp + i_ * f_in + second + (c - second) * f_cons
        total += t["total_s"]
        extrapolated += ext
        print(f"| {name} | {b:.1f} | {probe:.1f} | {h:.1f} | {sa:.1f} | {i_:.1f} | {c:.1f} | {t['total_s']:.1f} | "
              f"{ext:.0f} |")
    print(f"| all denoisers | | | | | | | {total:.0f} | {extrapolated:.0f} |")
    print(f"\nthe run: {r.get('seconds', 0):.0f} s, of which set-up (data, Wiener filter, PCA, classifier, real-image "
          f"sets) {r.get('seconds', 0) - total:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1])
