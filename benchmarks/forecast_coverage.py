"""`synthtl forecast` measured on simulated pilot studies (docs/method.md §10, benchmarks/RESULTS.md "Forecast"):

1. coverage: how often the 95% band holds the true curve, at the pilot's volumes and at 2x and 3x the largest
   (tests/test_forecast.py checks the same with fewer bootstrap refits);
2. the law choice: each candidate law fitted to a pilot's means, its error at held-out volumes (2000 and 3000/class),
   per family of true curves, and on He et al.'s Table 8 (fitted on 0 / 12k / 24k per class, predicting 36k);
3. the README's worked example at three assumed seed stds.

    python benchmarks/forecast_coverage.py [--studies 200] [--bootstrap 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the simulated studies live beside the tests

from tests.forecast.simulate import compare_laws, coverage, he_held_out, worked_example  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", type=int, default=200)
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    t0 = time.perf_counter()
    cov = coverage(args.studies, args.bootstrap, args.seed)
    print(f"1. coverage of the 95% band, {args.studies} simulated pilot studies (0/250/500/1000 per class x 2 seeds), "
          f"{args.bootstrap} bootstrap refits each ({time.perf_counter() - t0:.1f} s):")
    print("   " + "  ".join(f"{v:g}/class {c:.3f}" for v, c in cov.items()) + f"  (lowest {min(cov.values()):.3f})")
    t0 = time.perf_counter()
    rmse = compare_laws(args.studies, args.seed)
    print(f"\n2. held-out error (RMSE, pt, at 2000 and 3000/class) of each law fitted to a pilot's means, "
          f"{args.studies} studies per family of true curves ({time.perf_counter() - t0:.1f} s):")
    print(f"   {'true curves':<14}{'power':>10}{'loglinear':>11}")
    for family, err in rmse.items():
        print(f"   {family:<14}{err['power']:>10.2f}{err['loglinear']:>11.2f}")
    print("   He et al. Table 8, 36k/class predicted from 0/12k/24k (predicted - published, pt):")
    for curve, err in he_held_out().items():
        print(f"   {curve:<20}power {err['power']:+.2f}  loglinear {err['loglinear']:+.2f}")
    for sd in (0.1, 0.2, 0.3):
        print(f"\n3. worked example (README), power law, assumed seed std {sd} pt:")
        for name, r in worked_example(sd).items():
            print(f"   {name}: predicted {r['predicted']:.2f} % (95 % interval {r['lo']:.2f} to {r['hi']:.2f}), "
                  f"published {r['published']:.2f} %: {r['error']:+.2f} pt")


if __name__ == "__main__":
    main()
