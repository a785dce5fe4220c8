"""Shared-memory wavefronts of the FFMA ``tt.dot`` operands, simulated from a kernel's TTGIR.

On the fp32 FMA path (precision "ieee") Triton lowers ``tt.dot`` to FFMAs whose operands are read
from shared memory by ``ttg.local_load`` into ``#ttg.dot_op<{opIdx, parent = #blocked}>``. How
long such a read takes depends on which addresses the 32 lanes of a warp touch, which
``_sass`` (a byte count at full width) cannot see. This module replays them:

* **Ownership.** A blocked layout over a shape: per dim, ``coord = j % spt + spt * (lane_d + tpw *
  (warp_d + wpc * (j // spt)))`` modulo the dim (a dim smaller than the layout's coverage is
  replicated, as in Triton), with lane and warp ids split over the dims fastest-``order`` first.
  A dot operand owns its parent's rows (A [M, K]) or columns (B [K, N]) of the lane, every k; a
  ``#ttg.slice<{dim, parent}>`` owns the parent's coordinates with the sliced dim dropped.
* **Address** (``swizzled_offset``): Triton's ``#ttg.swizzled_shared`` rule. With ``order[0]``
  the contiguous dim (col) and ``order[1]`` the next (row): ``phase = (row // perPhase) %
  maxPhase``, ``col' = ((col // vec) ^ phase) * vec + col % vec``, offset = row-major over the
  dims in ``order`` with col' in place of col (the formula the C++ ``swizzledSharedToLinearLayout``
  implements; tests check it against triton's own linear layout). Buffers are taken 128-byte
  aligned (bank 0): Triton aligns its shared allocations so, and only the offset mod 128 matters.
* **Vectorisation**: the widest power of two v (at most 16 bytes) such that every lane's elements
  fall into whole aligned runs of v consecutive offsets; one access per run, the same runs
  (registers) for every lane, as Triton's ``ld.shared`` lowering emits them.
* **Wavefronts** (CUDA programming guide, shared memory): per warp-wide access
  ``max(ceil(distinct bytes / 128), max over the 32 banks of the distinct 4-byte words in it)``:
  lanes reading one word are served together (broadcast).

Every warp of the CTA is simulated, not one: warps differ by an offset of the row coordinate,
which a swizzle (phase) can turn into a different bank pattern, and the loads are small (a few
thousand lane-elements). Figures are per loop iteration and per warp (the mean over the warps;
``accesses`` and ``bytes`` are the same in every warp).

The SASS check (``check_against_sass``): the main loop's LDS (per width, ``LDS RZ, [RZ]`` left
out) must equal the simulated accesses of every ``local_load`` in the TTGIR loop holding the
dot, and its FFMA count M N K / (32 x warps), else the simulation is not what was compiled.
"""

from __future__ import annotations

import re
from collections import Counter
from itertools import product

from . import _sass

_ALIAS = re.compile(r"^(#\w+)\s*=\s*#ttg\.(blocked|swizzled_shared)<\{(.*)\}>")
_LOAD = re.compile(r"ttg\.local_load\s+%[\w#]+.*?:\s*!ttg\.memdesc<([^>]*)>\s*->\s*tensor<(.*)>\s*(?:loc\(|$)")
_DOT = re.compile(r"=\s*tt\.dot\s+(%[\w#]+),\s*(%[\w#]+),")
_BYTES = {"f32": 4, "i32": 4, "f16": 2, "bf16": 2, "f64": 8, "i64": 8, "i8": 1, "i16": 2}
WAVEFRONT_BYTES = 128
BANKS = 32


def _fields(body: str) -> dict:
    """'vec = 1, order = [1, 0]' -> {'vec': 1, 'order': [1, 0]} (ints and int lists only)."""
    out = {}
    for key, value in re.findall(r"(\w+)\s*=\s*(\[[^\]]*\]|-?\d+)", body):
        out[key] = [int(v) for v in value.strip("[]").split(",") if v.strip()] if value.startswith("[") else int(value)
    return out


def parse_aliases(ttgir: str) -> dict:
    """'#blocked2' -> {'kind': 'blocked', sizePerThread, threadsPerWarp, warpsPerCTA, order} and
    '#shared1' -> {'kind': 'swizzled_shared', vec, perPhase, maxPhase, order}."""
    aliases = {}
    for line in ttgir.splitlines():
        m = _ALIAS.match(line.strip())
        if m:
            aliases[m.group(1)] = dict(_fields(m.group(3)), kind=m.group(2))
    return aliases


def _tensor_type(text: str) -> tuple[list[int], int, str]:
    """'128x16xf32, #blocked1' -> ([128, 16], 4, '#blocked1')."""
    dims, _, layout = text.partition(",")
    parts = dims.strip().split("x")
    return [int(p) for p in parts[:-1]], _BYTES.get(parts[-1], 4), layout.strip()


def parse_loads(ttgir: str) -> list[dict]:
    """Every ``ttg.local_load`` and ``tt.dot``: {'op', 'name', 'loop' (index of the innermost
    enclosing scf.for, or None), ...}; loads carry 'shape', 'alloc', 'eb', 'shared' (alias) and
    'layout' (the result's layout text); dots their operand names."""
    ops, stack, loops = [], [], 0
    for line in ttgir.splitlines():
        code = re.sub(r"\s*loc\([^)]*\)\s*$", "", line).strip()
        if code.startswith("}"):  # a region ends; '} else {' / '} do {' open the next one at once
            if stack:
                stack.pop()
            if code.endswith("{"):
                stack.append(None)
            continue
        loop = next((s for s in reversed(stack) if s is not None), None)
        m, d = _LOAD.search(code), _DOT.search(code)
        if m:
            mem = [p.strip() for p in m.group(1).split(",")]
            shape, eb, _ = _tensor_type(mem[0])
            alloc = next((p for p in mem[2:] if re.fullmatch(r"\d+(x\d+)+|\d+", p)), None)
            alloc = [int(v) for v in alloc.split("x")] if alloc else shape
            rshape, _, layout = _tensor_type(m.group(2))
            ops.append({"op": "load", "name": code.split("=")[0].strip(), "loop": loop, "shape": rshape,
                        "alloc": alloc[-len(shape):], "eb": eb, "shared": mem[1], "layout": layout})
        elif d:
            ops.append({"op": "dot", "loop": loop, "a": d.group(1), "b": d.group(2),
                        "shape_a": _tensor_type(code.split(":", 1)[1].split("*")[0].strip()[7:-1])[0],
                        "shape_b": _tensor_type(code.split("*", 1)[1].split("->")[0].strip()[7:-1])[0]})
        if code.endswith("{"):
            if "scf.for" in code:
                stack.append(loops)
                loops += 1
            else:
                stack.append(None)
    return ops


def _split(index: int, sizes: list[int], order: list[int]) -> list[int]:
    """A lane (or warp) id as per-dim coordinates, order[0] fastest."""
    out = [0] * len(sizes)
    for dim in order:
        out[dim] = index % sizes[dim]
        index //= sizes[dim]
    return out


def blocked_owner(layout: dict, shape: list[int], warp: int, lane: int, dims=None) -> dict:
    """{register tuple: coordinate tuple} one lane of one warp holds of a blocked layout over
    ``shape``; ``dims`` maps each register/coordinate dim to a parent dim (default: identity)."""
    spt, tpw, wpc = layout["sizePerThread"], layout["threadsPerWarp"], layout["warpsPerCTA"]
    lane_c, warp_c = _split(lane, tpw, layout["order"]), _split(warp, wpc, layout["order"])
    dims = list(range(len(shape))) if dims is None else dims
    ranges = []
    for size, p in zip(shape, dims):
        cover = spt[p] * tpw[p] * wpc[p]
        count = spt[p] * max(1, -(-size // cover))
        base = spt[p] * (lane_c[p] + tpw[p] * warp_c[p])
        coords = [(j % spt[p] + base + cover * (j // spt[p])) % size for j in range(count)]
        ranges.append(list(dict.fromkeys(coords)))  # registers repeating a coordinate are not loaded twice
    return {regs: tuple(ranges[i][j] for i, j in enumerate(regs)) for regs in product(*(range(len(r)) for r in ranges))}


def owner(layout_text: str, aliases: dict, shape: list[int], warp: int, lane: int) -> dict:
    """{register: coordinate} of one lane for a result layout: a blocked alias, a slice of one, or
    an FMA dot operand (parent blocked). Raises ValueError for any other layout."""
    m = re.match(r"#ttg\.dot_op<\{opIdx = (\d), parent = (#\w+)", layout_text)
    if m:
        parent = aliases.get(m.group(2), {})
        if parent.get("kind") != "blocked" or len(shape) != 2:
            raise ValueError(f"dot operand with parent {m.group(2)} is not a 2-D FMA operand")
        idx, kdim = int(m.group(1)), 1 - int(m.group(1))  # A [M, K]: M is parent dim 0; B [K, N]: N is dim 1
        own = blocked_owner(parent, [shape[idx]], warp, lane, dims=[idx])
        k = range(shape[kdim])
        if idx == 0:
            return {(r[0], kk): (c[0], kk) for (r, c), kk in product(own.items(), k)}
        return {(kk, r[0]): (kk, c[0]) for (r, c), kk in product(own.items(), k)}
    m = re.match(r"#ttg\.slice<\{dim = (\d+), parent = (#\w+)\}>", layout_text)
    if m:
        parent, dim = aliases.get(m.group(2), {}), int(m.group(1))
        if parent.get("kind") != "blocked":
            raise ValueError(f"slice of {m.group(2)} is not of a blocked layout")
        full = shape[:dim] + [1] + shape[dim:]
        own = blocked_owner(parent, full, warp, lane)
        return {r[:dim] + r[dim + 1:]: c[:dim] + c[dim + 1:] for r, c in own.items() if r[dim] == 0}
    layout = aliases.get(layout_text, {})
    if layout.get("kind") != "blocked":
        raise ValueError(f"layout {layout_text[:60]} is not simulated (only blocked, slice and FMA dot operands)")
    return blocked_owner(layout, shape, warp, lane)


def swizzled_offset(coord: tuple, shape: list[int], vec: int, per_phase: int, max_phase: int, order: list[int]) -> int:
    """Element offset of ``coord`` in a ``#ttg.swizzled_shared`` buffer of ``shape``."""
    col_dim = order[0]
    col = coord[col_dim]
    if len(shape) >= 2:
        row = coord[order[1]]
        phase = (row // per_phase) % max_phase
        col = ((col // vec) ^ phase) * vec + col % vec
    offset, stride = 0, 1
    for dim in order:
        offset += (col if dim == col_dim else coord[dim]) * stride
        stride *= shape[dim]
    return offset


def wavefronts(words: set[int]) -> int:
    """Wavefronts of one warp-wide access touching these 4-byte words (the module docstring's rule)."""
    if not words:
        return 0
    per_bank = Counter(w % BANKS for w in words)
    return max(-(-len(words) * 4 // WAVEFRONT_BYTES), max(per_bank.values()))


def simulate_load(load: dict, aliases: dict, num_warps: int) -> dict:
    """{'accesses', 'width_bits', 'bytes', 'wavefronts'} per warp for one local_load (see module doc)."""
    shared = aliases.get(load["shared"], {})
    if shared.get("kind") != "swizzled_shared":
        raise ValueError(f"shared layout {load['shared']} is not #ttg.swizzled_shared")
    eb, alloc = load["eb"], load["alloc"]
    args = (alloc, shared["vec"], shared["perPhase"], shared["maxPhase"], shared["order"])
    lanes = {}
    for w, lane in product(range(num_warps), range(32)):
        own = owner(load["layout"], aliases, load["shape"], w, lane)
        lanes[(w, lane)] = {r: swizzled_offset(c, *args) for r, c in own.items()}
    first = lanes[(0, 0)]
    v = max(1, 16 // eb)
    while v > 1:  # the widest run every lane reads as whole aligned blocks of v consecutive offsets
        groups = {}
        for r, off in first.items():
            groups.setdefault(off // v, []).append(r)
        if all(len(g) == v for g in groups.values()) and all(
                len({offs[r] // v for r in g}) == 1 for offs in lanes.values() for g in groups.values()):
            break
        v //= 2
    runs = {}
    for r, off in first.items():
        runs.setdefault(off // v, []).append(r)
    total = 0
    for w in range(num_warps):
        for regs in runs.values():
            words = {(lanes[(w, lane)][r] * eb + b) // 4 for lane in range(32) for r in regs for b in range(eb)}
            total += wavefronts(words)
    width = v * eb * 8
    return {"accesses": len(runs), "width_bits": width, "bytes": len(runs) * width // 8 * 32,
            "wavefronts": total / num_warps if total % num_warps else total // num_warps}


def ffma_operands(ttgir: str, num_warps: int) -> dict:
    """Per warp and iteration of the TTGIR loop with the most FFMA dot work: {'operands': {'A' | 'B':
    {'accesses', 'bytes', 'wavefronts', 'width_bits'}}, 'lds': Counter(width bits -> count) of every
    local_load in that loop, 'ffma': M N K / (32 warps), 'dots'}; {} when no FMA dot is in a loop."""
    aliases, ops = parse_aliases(ttgir), parse_loads(ttgir)
    loads = {o["name"]: o for o in ops if o["op"] == "load"}
    fma = [o for o in ops if o["op"] == "dot" and o["loop"] is not None and "parent = #blocked" in
           loads.get(o["a"], {}).get("layout", "") and "opIdx" in loads[o["a"]]["layout"]]
    if not fma:
        return {}
    work = Counter()
    for d in fma:
        work[d["loop"]] += d["shape_a"][0] * d["shape_a"][1] * d["shape_b"][1]
    loop = max(work, key=lambda k: (work[k], -k))
    dots = [d for d in fma if d["loop"] == loop]
    in_loop = [o for o in ops if o["op"] == "load" and o["loop"] == loop]
    sims = {o["name"]: simulate_load(o, aliases, num_warps) for o in in_loop}
    operands, lds = {}, Counter()
    for d in dots:
        for key, name in (("A", d["a"]), ("B", d["b"])):
            sim = sims[name] if name in sims else simulate_load(loads[name], aliases, num_warps)
            acc = operands.setdefault(key, {"accesses": 0, "bytes": 0, "wavefronts": 0,
                                            "width_bits": sim["width_bits"]})
            for k in ("accesses", "bytes", "wavefronts"):
                acc[k] += sim[k]
    for sim in sims.values():
        lds[sim["width_bits"]] += sim["accesses"]
    return {"operands": operands, "lds": lds, "ffma": work[loop] // (32 * num_warps), "dots": len(dots)}


def sass_lds(sass: str, start: int, end: int) -> Counter:
    """LDS per access width (bits) in [start, end], leaving out ``LDS RZ, [RZ]`` (no data)."""
    return Counter(_sass.access_bits(i.opcode) for i in _sass.parse_instructions(sass)
                   if start <= i.address <= end and i.opcode.split(".")[0] == "LDS"
                   and not i.operands.replace(" ", "").startswith("RZ,"))


def gate_facts(ttgir: str, sass: str, main_loop: dict | None, num_warps: int) -> dict:
    """What the compile gate reports for a build whose SASS main loop is FFMA: ``smem_wavefronts``
    (the operands, see ``ffma_operands``), ``smem_consistent`` (the SASS agrees: LDS per width and
    FFMA count) and ``smem_note`` (why not, or why nothing was simulated). {} otherwise, and where
    no FMA ``tt.dot`` sits in a loop (the FFMAs are elementwise math)."""
    if not main_loop or not main_loop.get("ffma") or main_loop.get("hgmma") or main_loop.get("hmma"):
        return {}
    try:
        sim = ffma_operands(ttgir, num_warps)
    except Exception as exc:  # a layout or type this reader does not know: say so, do not stop the gate
        return {"smem_wavefronts": {}, "smem_consistent": False,
                "smem_note": f"not simulated: {type(exc).__name__}: {exc}"}
    if not sim:  # FFMAs of elementwise math (the softmax), not of a dot: nothing to simulate
        return {}
    seen = sass_lds(sass, main_loop["start"], main_loop["end"])
    notes = []
    if seen != sim["lds"]:
        fmt = lambda c: ", ".join(f"LDS.{b} x{n}" for b, n in sorted(c.items(), reverse=True))  # noqa: E731
        notes.append(f"SASS main loop has {fmt(seen)}, TTGIR loop simulates {fmt(sim['lds'])}")
    if sim["ffma"] != main_loop["ffma"]:
        notes.append(f"SASS main loop has {main_loop['ffma']} FFMA, the dot needs {sim['ffma']} per warp")
    return {"smem_wavefronts": sim["operands"], "smem_consistent": not notes, "smem_note": "; ".join(notes)}
