"""Compile gate: build every kernel as Triton's JIT specialises it, for sm_80 and sm_90, on CPU.

Run ``python -m fastgauss.kernels.check [--json FILE] [--all-archs]``. Each kernel module lists
its launch configurations in ``gate_entries()`` and, optionally, the launches it makes at the
library's target shapes in ``gate_targets()``: ``(entry_name, shape_label, int_args, grid)``.

Specialisation (``specialise``): like the JIT, every pointer is taken 16-byte aligned (a torch
allocation), an int argument divisible by 16 gets ``tt.divisibility = 16`` and an int equal to 1
becomes a constant (both from Triton's own ``native_specialize_impl``). Builds:

* ``odd``: every int unhinted, as the JIT compiles for sizes not divisible by 16 — on every arch,
  for every entry, except those the module's ``gate_aligned()`` lists (entry name -> {int
  argument: 16 or 1}, what its launcher always passes: a multiple of 16, or 1): for them the
  ``aligned`` build specialises those ints so and leaves the others unhinted, since the odd build
  is never launched;
* ``jit``: one build per distinct specialisation of an entry's targets, on sm_90 (the H200 the
  targets describe) — with ``--all-archs`` on sm_80 too.

An entry the module's ``gate_archs()`` lists (entry name -> archs) is built on those archs only.

For each build it reads the cubin with the cuobjdump that ships with Triton: registers, stack
(spills), shared memory, CTAs per SM (``_occupancy``), and from the SASS (``_sass``, where each
measurement is explained) the matrix instructions, the main loop's HGMMA shapes, wgmma wait
depth, global load width and TMA use; where the main loop is FFMA, the shared-memory wavefronts
of the dot operands simulated from the TTGIR (``_smem``: broadcast and bank conflicts), checked
against the SASS's LDS. Per target: grid, CTAs, waves, wave efficiency.

Exits 1 on a compile error, any spill, shared memory over the architecture's limit, a kernel
meant for tensor cores that does not use the arch's own matrix instruction (HMMA on sm_80, HGMMA
on sm_90), an exact-fp32 kernel that uses any, or a target naming no entry. The first line
printed names the Triton version that built the cubins.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import triton
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource

from . import KERNEL_MODULES, _occupancy, _sass, _smem

try:  # the JIT's own specialisation of one argument (Triton 3.6 and 3.9 alike)
    from triton._C.libtriton import native_specialize_impl
except ImportError:  # pragma: no cover - older Triton: the same rule written out
    native_specialize_impl = None

ARCHS = (80, 90)
TARGET_ARCH = 90
#: Largest dynamic shared memory one block may opt into (CUDA programming guide).
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
MMA_OPCODES = ("HGMMA", "HMMA", "DMMA", "IMMA")


@dataclass
class GateResult:
    kernel: str
    arch: int
    num_warps: int
    num_stages: int
    build: str = "odd"  # "odd", "aligned" or "jit"
    expect_mma: bool = False  # meant for tensor cores (the gate_entries flag)
    specialisation: str = ""  # per argument: D (16-divisible), 1 (constant), - (none), c (constexpr)
    constexprs: dict = field(default_factory=dict)
    registers: int = -1
    spill_bytes: int = -1
    shared_bytes: int = -1
    ctas_per_sm: int = -1
    occupancy_limit: str = ""
    mma: str = ""
    hgmma: str = ""
    a_source: str = ""
    wait_depth: int | None = None
    load_width: str = ""
    widest_global_load: int = 0
    tma: bool = False
    main_loop: dict | None = None
    inner_loops: list = field(default_factory=list)
    outer_loops: list = field(default_factory=list)
    targets: list = field(default_factory=list)  # {shape, grid, ctas, waves, wave_efficiency}
    smem_wavefronts: dict = field(default_factory=dict)  # FFMA main loop: per dot operand, _smem
    smem_consistent: bool | None = None  # the simulation agrees with the SASS (None: not FFMA)
    smem_note: str = ""
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

    def to_dict(self) -> dict:
        return dict(asdict(self), failures=self.failures)


def _cuobjdump() -> str:
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.exists():
        raise FileNotFoundError(f"cuobjdump not found at {path}; is this Triton's NVIDIA backend?")
    return str(path)


def _dump(cubin: bytes) -> tuple[str, str]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([_cuobjdump(), "-res-usage", f.name], capture_output=True,
                               text=True, check=True).stdout
        sass = subprocess.run([_cuobjdump(), "-sass", f.name], capture_output=True,
                              text=True, check=True).stdout
    return usage, sass


def parse_usage(usage: str) -> tuple[int, int]:
    """Registers and spill bytes (stack + local) from ``cuobjdump -res-usage``."""
    registers = int(re.search(r"REG:(\d+)", usage).group(1))
    spills = int(re.search(r"STACK:(\d+)", usage).group(1)) + int(re.search(r"LOCAL:(\d+)", usage).group(1))
    return registers, spills


def matrix_opcodes(sass: str) -> str:
    seen = [op for op in MMA_OPCODES if re.search(rf"\b{op}\b", sass)]
    if not seen and re.search(r"\bFFMA\b", sass):
        seen = ["FFMA"]
    return ",".join(seen)


def _int_hint(value: int) -> str:
    """'D' (divisible by 16), '1' (the constant 1) or '' — the JIT's rule for an int argument."""
    if native_specialize_impl is not None:
        kind, hint = native_specialize_impl(BaseBackend, value, False, True, True)
        return "1" if kind == "constexpr" else hint
    return "1" if value == 1 else ("D" if value % 16 == 0 else "")


def specialise(fn, signature: dict, constexprs: dict, int_args: dict | None):
    """(signature, constexprs, attrs, key) as the JIT builds them for these int arguments.

    int_args None: the 'odd' build (every int unhinted). Pointers are 16-byte aligned either way
    (unless the kernel opts out with do_not_specialize_on_alignment, as the JIT honours).
    key: one character per signature entry (see GateResult.specialisation)."""
    signature, constexprs, attrs, key = dict(signature), dict(constexprs), {}, []
    params = getattr(fn, "params", None)
    missing = [n for n, t in signature.items() if t[0] in "iu" and int_args is not None and n not in int_args]
    if missing:
        raise KeyError(f"target lacks int arguments {', '.join(missing)}")
    for i, (name, kind) in enumerate(signature.items()):
        param = params[fn.arg_names.index(name)] if params is not None else None
        hint = ""
        if kind.startswith("*"):
            hint = "" if param is not None and param.do_not_specialize_on_alignment else "D"
        elif kind[0] in "iu" and int_args is not None and not (param is not None and param.do_not_specialize):
            hint = _int_hint(int(int_args[name]))
        if hint == "1":
            signature[name], constexprs[name] = "constexpr", 1
        elif hint == "D":
            attrs[(i,)] = [["tt.divisibility", 16]]
        key.append("c" if kind == "constexpr" else (hint or "-"))
    return signature, constexprs, attrs, "".join(key)


def compile_entry(name, fn, signature, constexprs, num_warps, num_stages, expect_mma, arch,
                  int_args=None, build=None) -> GateResult:
    sig, consts, attrs, key = specialise(fn, signature, constexprs, int_args)
    build = build or ("odd" if int_args is None else "jit")
    result = GateResult(name, arch, num_warps, num_stages, build=build,
                        specialisation=key, constexprs={k: v for k, v in constexprs.items()
                                                        if isinstance(v, (int, float, str, bool))})
    result.expect_mma = bool(expect_mma)
    try:
        source = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": num_warps, "num_stages": num_stages})
        result.shared_bytes = int(compiled.metadata.shared)
        usage, sass = _dump(compiled.asm["cubin"])
        result.registers, result.spill_bytes = parse_usage(usage)
        result.mma = matrix_opcodes(sass)
        facts = _sass.sass_facts(sass)
    except Exception as exc:  # the gate reports every failure, it does not stop at the first
        result.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        return result
    summary = _sass.summary(facts)
    result.hgmma, result.a_source = summary["hgmma"], summary["a_source"]
    result.wait_depth, result.load_width = summary["wait_depth"], summary["load_width"]
    result.widest_global_load, result.tma = facts.widest_global_load, facts.tma
    as_dict = facts.to_dict()
    result.main_loop, result.inner_loops = as_dict["main_loop"], as_dict["inner_loops"]
    result.outer_loops = as_dict["outer_loops"]
    for key, value in _smem.gate_facts(compiled.asm["ttgir"], sass, result.main_loop, num_warps).items():
        setattr(result, key, value)
    result.ctas_per_sm, result.occupancy_limit = _occupancy.ctas_per_sm(
        result.registers, num_warps, result.shared_bytes, arch)
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


def target_row(shape: str, grid, ctas_per_sm: int, int_args: dict | None = None) -> dict:
    w = _occupancy.waves(tuple(grid), ctas_per_sm)
    return {"shape": shape, "grid": list(grid), "ctas": w.ctas, "slots": w.slots, "waves": w.waves,
            "wave_efficiency": round(w.efficiency, 4), "int_args": dict(int_args or {})}


def aligned_args(signature: dict, given: dict) -> dict:
    """Int arguments of an ``aligned`` build: those ``given`` (16: a multiple of 16, 1: always 1),
    the rest a value that gets no hint (neither divisible by 16 nor 1)."""
    return {n: int(given.get(n, 7)) for n, kind in signature.items() if kind[0] in "iu"}


def plan(module) -> list[tuple[tuple, int | None, dict | None, list]]:
    """(entry, build arch or None for every arch, int_args or None, targets) per build of a module."""
    entries = {e[0]: e for e in module.gate_entries()}
    unknown = sorted(set(entry_archs(module)) - set(entries))
    if unknown:
        raise KeyError(f"{module.__name__}.gate_archs names no gate entry: {', '.join(unknown)}")
    targets = list(module.gate_targets()) if hasattr(module, "gate_targets") else []
    unknown = sorted({t[0] for t in targets} - set(entries))
    if unknown:
        raise KeyError(f"{module.__name__}.gate_targets names no gate entry: {', '.join(unknown)}")
    aligned = dict(module.gate_aligned()) if hasattr(module, "gate_aligned") else {}
    unknown = sorted(set(aligned) - set(entries))
    if unknown:
        raise KeyError(f"{module.__name__}.gate_aligned names no gate entry: {', '.join(unknown)}")
    builds = [(entry, None, aligned_args(entry[2], aligned[entry[0]]) if entry[0] in aligned else None, [])
              for entry in entries.values()]
    by_key: dict = {}
    for name, shape, int_args, grid in targets:
        entry = entries[name]
        key = (name, specialise(entry[1], entry[2], entry[3], int_args)[3])
        if key not in by_key:
            by_key[key] = (entry, TARGET_ARCH, dict(int_args), [])
            builds.append(by_key[key])
        by_key[key][3].append((shape, tuple(grid), dict(int_args)))
    return builds


def entry_archs(module) -> dict:
    """Entries a module builds only on some archs (``gate_archs()``: entry name -> archs), e.g. an
    sm_90 configuration that is never launched elsewhere."""
    return dict(module.gate_archs()) if hasattr(module, "gate_archs") else {}


def run_gate(modules=KERNEL_MODULES, archs=ARCHS, all_archs=False) -> list[GateResult]:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("the compile gate builds real cubins: run it with TRITON_INTERPRET unset "
                           "(python -m fastgauss.kernels.check does so by itself)")
    results = []
    for module_name in modules:
        module = importlib.import_module(f"{__package__}.{module_name}")
        try:
            builds = plan(module)
        except Exception as exc:
            results.append(GateResult(f"{module_name}.gate_targets", TARGET_ARCH, 0, 0,
                                      error=f"{type(exc).__name__}: {exc}"))
            continue
        only = entry_archs(module)
        for entry, arch_only, int_args, targets in builds:
            for arch in archs:
                elsewhere = arch_only is not None and arch != arch_only and not all_archs
                if elsewhere or arch not in only.get(entry[0], archs):
                    continue
                aligned_build = arch_only is None and int_args is not None
                result = compile_entry(*entry, arch=arch, int_args=int_args, build="aligned" if aligned_build else None)
                if arch == TARGET_ARCH:
                    result.targets = [target_row(s, g, result.ctas_per_sm, a) for s, g, a in targets]
                results.append(result)
    return results


def format_table(results: list[GateResult]) -> str:
    header = (f"{'kernel':<44} {'arch':>5} {'build':>5} {'warps':>5} {'stg':>3} {'regs':>4} {'spill':>5} "
              f"{'smem':>6} {'cta/sm':>6}  {'mma':<6} {'hgmma (main loop)':<26} {'A':<4} {'wait':>4}  "
              f"{'global loads (main loop)':<40} status")
    lines = [header, "-" * len(header)]
    for r in results:
        status = "ok" if not r.failures else "FAIL: " + "; ".join(r.failures)
        wait = "" if r.wait_depth is None else str(r.wait_depth)
        loads = r.load_width + (" TMA" if r.tma else "")
        lines.append(f"{r.kernel:<44} {'sm_%d' % r.arch:>5} {r.build:>5} {r.num_warps:>5} {r.num_stages:>3} "
                     f"{r.registers:>4} {r.spill_bytes:>5} {r.shared_bytes:>6} "
                     f"{'%d %s' % (r.ctas_per_sm, r.occupancy_limit[:4]):>6}  {r.mma:<6} {r.hgmma:<26} "
                     f"{r.a_source[:4]:<4} {wait:>4}  {loads:<40} {status}")
    return "\n".join(lines)


def format_targets(results: list[GateResult]) -> str:
    header = f"{'kernel':<44} {'shape':<34} {'grid':<14} {'CTAs':>6} {'slots':>5} {'waves':>5} {'wave eff':>8}"
    lines = [header, "-" * len(header)]
    for r in results:
        for t in r.targets:
            grid = "x".join(map(str, t["grid"]))
            lines.append(f"{r.kernel:<44} {t['shape']:<34} {grid:<14} {t['ctas']:>6} {t['slots']:>5} "
                         f"{t['waves']:>5} {t['wave_efficiency']:>8.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastgauss.kernels.check", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, action="append", choices=ARCHS, help="only this arch (repeatable)")
    parser.add_argument("--all-archs", action="store_true", help="build the target specialisations on every arch")
    parser.add_argument("--only", help="only the modules named (comma-separated, e.g. gaussian,empirical)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        # The interpreter replaces every @triton.jit function at import: start afresh without it.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        argv = sys.argv[1:] if argv is None else list(argv)
        return subprocess.run([sys.executable, "-m", __spec__.name, *argv], env=env).returncode
    archs = tuple(args.arch or ARCHS)
    print(f"compile gate: triton {triton.__version__}, archs {', '.join(f'sm_{a}' for a in archs)}", flush=True)
    modules = tuple(args.only.split(",")) if args.only else KERNEL_MODULES
    results = run_gate(modules, archs=archs, all_archs=args.all_archs)
    print(format_table(results))
    if any(r.targets for r in results):
        print(f"\ntarget launches on an H200 ({_occupancy.H200_SMS} SMs), sm_90 builds:")
        print(format_targets(results))
    if args.json:
        args.json.write_text(json.dumps([r.to_dict() for r in results], indent=1))
    failed = [r for r in results if r.failures]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
