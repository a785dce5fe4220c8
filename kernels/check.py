"""Compile gate: build every kernel in every launch configuration for sm_80 and sm_90 on CPU.

Run ``python -m fastgauss.kernels.check``. For each build it reads the cubin with the
cuobjdump that ships with Triton: registers, stack (spills), shared memory, and which
matrix instructions the code uses. Exits 1 on a compile error, any spill, shared memory
over the architecture's limit, a kernel meant for tensor cores that does not use the arch's
own matrix instruction (HMMA on sm_80, HGMMA on sm_90), or an exact-fp32 kernel that uses
any. The first line printed names the Triton version that built the cubins.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import KERNEL_MODULES

ARCHS = (80, 90)
#: Largest dynamic shared memory one block may opt into (CUDA programming guide).
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
MMA_OPCODES = ("HGMMA", "HMMA", "DMMA", "IMMA")


@dataclass
class GateResult:
    kernel: str
    arch: int
    num_warps: int
    num_stages: int
    registers: int = -1
    spill_bytes: int = -1
    shared_bytes: int = -1
    mma: str = ""
    error: str = ""

    @property
    def failures(self) -> list[str]:
        if self.error:
            return [self.error]
        problems = []
        if self.spill_bytes:
            problems.append(f"spills {self.spill_bytes} bytes")
        if self.shared_bytes > SHARED_LIMIT[self.arch]:
            problems.append(f"shared memory {self.shared_bytes} > {SHARED_LIMIT[self.arch]}")
        return problems


def _cuobjdump() -> str:
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.exists():
        raise FileNotFoundError(f"cuobjdump not found at {path}; is this Triton's NVIDIA backend?")
    return str(path)


def _inspect_cubin(cubin: bytes) -> tuple[int, int, str]:
    """Registers, spill bytes (stack + local) and matrix opcodes seen in a cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([_cuobjdump(), "-res-usage", f.name], capture_output=True,
                               text=True, check=True).stdout
        sass = subprocess.run([_cuobjdump(), "-sass", f.name], capture_output=True,
                              text=True, check=True).stdout
    registers = int(re.search(r"REG:(\d+)", usage).group(1))
    spills = int(re.search(r"STACK:(\d+)", usage).group(1)) + int(re.search(r"LOCAL:(\d+)", usage).group(1))
    seen = [op for op in MMA_OPCODES if re.search(rf"\b{op}\b", sass)]
    if not seen and re.search(r"\bFFMA\b", sass):
        seen = ["FFMA"]
    return registers, spills, ",".join(seen)


def compile_entry(name, fn, signature, constexprs, num_warps, num_stages, expect_mma, arch) -> GateResult:
    result = GateResult(name, arch, num_warps, num_stages)
    try:
        source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": num_warps, "num_stages": num_stages})
        result.shared_bytes = int(compiled.metadata.shared)
        result.registers, result.spill_bytes, result.mma = _inspect_cubin(compiled.asm["cubin"])
    except Exception as exc:  # the gate reports every failure, it does not stop at the first
        result.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        return result
    result.error = instruction_problem(result.mma, expect_mma, arch)
    return result


def instruction_problem(mma: str, expect_mma: bool, arch: int) -> str:
    """'' when the matrix instructions seen (comma-separated, as in GateResult.mma) are right:
    a tensor-core kernel uses the arch's own (HMMA on sm_80, HGMMA i.e. wgmma on sm_90), an
    exact-fp32 kernel uses FFMA and nothing else."""
    seen = [op for op in mma.split(",") if op]
    wanted = ("HGMMA" if arch >= 90 else "HMMA") if expect_mma else "FFMA"
    if (wanted in seen) if expect_mma else (seen == [wanted]):
        return ""
    return f"expected {wanted} instructions, saw {mma or 'none'}"


def run_gate(modules=KERNEL_MODULES, archs=ARCHS) -> list[GateResult]:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("the compile gate builds real cubins: run it with TRITON_INTERPRET unset "
                           "(python -m fastgauss.kernels.check does so by itself)")
    results = []
    for module_name in modules:
        module = importlib.import_module(f"{__package__}.{module_name}")
        for entry in module.gate_entries():
            for arch in archs:
                results.append(compile_entry(*entry, arch=arch))
    return results


def format_table(results: list[GateResult]) -> str:
    header = f"{'kernel':<44} {'arch':>5} {'warps':>5} {'stages':>6} {'regs':>5} {'spill':>6} {'smem':>7}  {'mma':<10} status"
    lines = [header, "-" * len(header)]
    for r in results:
        status = "ok" if not r.failures else "FAIL: " + "; ".join(r.failures)
        lines.append(f"{r.kernel:<44} {'sm_%d' % r.arch:>5} {r.num_warps:>5} {r.num_stages:>6} "
                     f"{r.registers:>5} {r.spill_bytes:>6} {r.shared_bytes:>7}  {r.mma:<10} {status}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastgauss.kernels.check", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, action="append", choices=ARCHS, help="only this arch (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        # The interpreter replaces every @triton.jit function at import: start afresh without it.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        argv = sys.argv[1:] if argv is None else list(argv)
        return subprocess.run([sys.executable, "-m", __spec__.name, *argv], env=env).returncode
    print(f"compile gate: triton {triton.__version__}, archs {', '.join(f'sm_{a}' for a in args.arch or ARCHS)}",
          flush=True)
    results = run_gate(archs=tuple(args.arch or ARCHS))
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps([dict(dataclasses.asdict(r), failures=r.failures) for r in results], indent=1))
    failed = [r for r in results if r.failures]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
