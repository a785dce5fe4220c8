"""One-shot GPU check: every kernel against float64 references, then timings against baselines.

    python benchmarks/gpu_check.py --out benchmarks/results/DATE-DEVICE      (on a CUDA machine)
    python benchmarks/gpu_check.py --out /tmp/smoke --smoke                 (CPU, Triton interpreter)

Runs in a few minutes on an H200. Prints the result table last and writes ``results.json``
and ``table.txt`` into the output folder. Exit status 1 when any correctness check fails.
``--smoke`` runs the correctness part at tiny sizes on CPU tensors through the Triton
interpreter (no timings), so the script itself is tested without a GPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("moments", "gaussian", "empirical")


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for results.json and table.txt")
    parser.add_argument("--smoke", action="store_true", help="CPU + Triton interpreter, tiny sizes, no timings")
    parser.add_argument("--only", action="append", choices=FAMILIES,
                        help="run only this kernel family (repeatable; default: all)")
    return parser.parse_args(argv)


def _import_fastgauss():
    """Import fastgauss from this checkout, installed or not (the device machine runs a bare copy)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import fastgauss

    try:
        import fastgauss.kernels  # noqa: F401
    except ImportError:  # not installed: map kernels/ to fastgauss.kernels as the package does
        spec = importlib.util.spec_from_file_location(
            "fastgauss.kernels", REPO / "kernels" / "__init__.py",
            submodule_search_locations=[str(REPO / "kernels")])
        module = importlib.util.module_from_spec(spec)
        sys.modules["fastgauss.kernels"] = module
        spec.loader.exec_module(module)
    return fastgauss


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("FASTGAUSS_COMMIT", "unknown")


def main(argv=None) -> int:
    args = _parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ["FASTGAUSS_BACKEND"] = "triton"
    fastgauss = _import_fastgauss()
    import torch

    from gpu_check_lib import Report, measure_peaks
    from gpu_check_empirical import check_empirical, time_empirical
    from gpu_check_gaussian import check_gaussian, time_gaussian
    from gpu_check_moments import check_moments, time_moments

    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --smoke to run the checks on CPU", file=sys.stderr)
        return 2
    report = Report(meta={
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreter smoke)",
        "torch": torch.__version__, "triton": _version("triton"), "python": platform.python_version(),
        "fastgauss": fastgauss.__version__,
    })
    if not args.smoke:
        report.meta["peaks"] = measure_peaks(device)
    families = {"moments": (check_moments, time_moments), "gaussian": (check_gaussian, time_gaussian),
                "empirical": (check_empirical, time_empirical)}
    chosen = args.only or FAMILIES
    for name in chosen:
        families[name][0](report, device, smoke=args.smoke)
    if not args.smoke:
        for name in chosen:
            families[name][1](report, device)
    args.out.mkdir(parents=True, exist_ok=True)
    table = report.table()
    (args.out / "results.json").write_text(json.dumps(report.as_dict(), indent=2))
    (args.out / "table.txt").write_text(table + "\n")
    print(table)
    return 0 if report.all_passed else 1


def _version(name: str) -> str:
    try:
        return importlib.import_module(name).__version__
    except ImportError:
        return "missing"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
