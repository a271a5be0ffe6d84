"""masterkey.fit on N random 7x7 filters given as a NumPy array, against the
CLI's `bench fit` (the Rust core's fit of the same number of filters, same
keys), run one after the other in the same minute. Prints the medians and two
ratios: against the core's bare fit (`fit_filters`), and against the core
function that `masterkey fit` and `masterkey.fit` both run (`fit_array`: the
same fit with the dead check, the per-filter columns and the coverage
summary), which leaves only what the binding adds (copies, conversions,
the GIL). The Python call includes everything a user pays for.

    scripts/bench-python [--filters 1000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time

import numpy as np

import masterkey


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cli", required=True, help="the masterkey binary (release build)")
    p.add_argument("--filters", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per round and side")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()

    filters = np.random.default_rng(args.seed).standard_normal((args.filters, 7, 7), dtype=np.float32)
    bank = masterkey.Bank("published8")
    # Rounds alternate the two, so that a slower minute of a shared machine
    # weighs on both; each round's ratio compares medians of the same size.
    cli_times, cli_fit_array_times, python_times, ratios, binding_ratios = [], [], [], [], []
    for _ in range(args.rounds):
        out = subprocess.run(
            [args.cli, "bench", "fit", "--filters", str(args.filters), "--repeats", str(args.repeats),
             "--seed", str(args.seed), "--json"],
            capture_output=True, text=True, check=True,
        )
        cli = json.loads(out.stdout.splitlines()[-1])
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = masterkey.fit(filters, bank, control_seed=None)
            times.append(time.perf_counter() - t0)
        cli_times.append(cli["masterkey_median_s"])
        cli_fit_array_times.append(cli["masterkey_fit_array_median_s"])
        python_times.append(float(np.median(times)))
        ratios.append(python_times[-1] / cli_times[-1])
        binding_ratios.append(python_times[-1] / cli_fit_array_times[-1])
    print(
        f"fit of {args.filters:,} random 7x7 filters to published8, {args.rounds} rounds x median of "
        f"{args.repeats}, {cli['cores']} cores"
    )
    print(f"  CLI core, bare fit:              {' '.join(f'{t:.4f}' for t in cli_times)} s")
    print(f"  CLI core, fit_array:             {' '.join(f'{t:.4f}' for t in cli_fit_array_times)} s")
    print(f"  masterkey.fit (NumPy array):     {' '.join(f'{t:.4f}' for t in python_times)} s")
    print(f"  ratio Python / bare fit:         {' '.join(f'{r:.2f}' for r in ratios)}; median {np.median(ratios):.2f}x")
    print(
        f"  ratio Python / fit_array:        {' '.join(f'{r:.2f}' for r in binding_ratios)}; "
        f"median {np.median(binding_ratios):.2f}x"
    )
    print(f"  (coverage at |cos| >= 0.5 of the last fit: {result.coverage['0.5']:.4f})")


if __name__ == "__main__":
    main()
