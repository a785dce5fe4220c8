"""Facts read from a kernel's SASS (``cuobjdump -sass``): loops, matrix instructions, memory widths.

How each fact is measured:

* **Loops** are the address ranges ``[target, branch]`` of backward branches (``BRA`` to a
  lower address). The *inner loops* are those containing no other loop; the *main loop* is the
  inner loop with the most math instructions (HGMMA, HMMA, FFMA), loops with tensor-core ones
  first (ties: the first) — for a Triton ``tl.dot`` loop, the software-pipelined K loop; where
  two loops hold HGMMAs (the empirical kernel's X.Y^T and P.V) it is the one with more of them.
  Counts are per pass of that range, i.e. per iteration of the loop, per warp (SASS is one
  warp's instruction stream). The *outer loops* hold other loops; their facts leave those out.
* **HGMMA shapes**: the ``HGMMA.MxNxK.Acc.In`` opcode suffix, counted. ``a_source`` is
  "registers" when the first source operand is a register (``HGMMA ... R24, R56, gdesc[..]``:
  A built in registers), "shared" when it is a ``gdesc[..]`` descriptor.
* **wgmma wait depth**: each wgmma group is opened by ``WARPGROUP.ARRIVE`` and waited on by
  ``WARPGROUP.DEPBAR.LE gsb0, N``, which blocks until at most N groups are still in flight.
  The depth is the smallest N in the main loop: 0 means each wgmma is waited on right after it
  is issued (no overlap of a wgmma with the next iteration's work); 1 means one stays in flight.
* **Global load width**: every ``LDG`` / ``LDGSTS`` (cp.async) opcode in the main loop with its
  access width in bits (``.128``, ``.64``, ``.U16``/``.S16`` 16, ``.U8``/``.S8`` 8, else 32);
  ``UTMALDG`` is a TMA tensor load (its box size is not in the opcode: width reported "tma").
* **Shared-memory bytes** per warp instruction: ``LDS``/``STS`` width x 32 lanes, ``LDSM ...M88.n``
  n x 128 B (n 8x8 matrices of 16-bit), ``LDGSTS`` width x 32 (written into shared memory).
  HGMMA operands read from shared memory are counted per warpgroup (``hgmma_smem_bytes``):
  B = N x K x element bytes, plus A = M x K x element bytes when A comes from shared memory.
* **Issue slots**: instructions in the range (NOPs excluded), per warp.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field

_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Za-z0-9_.]*)\s*([^;]*);")
_MATH = ("HGMMA", "HMMA", "DMMA", "IMMA", "FFMA")
_ELEMENT_BYTES = {"BF16": 2, "F16": 2, "TF32": 4, "E4M3": 1, "E5M2": 1, "S8": 1, "U8": 1}


@dataclass(frozen=True)
class Instr:
    address: int
    opcode: str
    operands: str


def parse_instructions(sass: str) -> list[Instr]:
    """The instructions of the first function in a ``cuobjdump -sass`` listing, in order."""
    instrs = []
    for line in sass.splitlines():
        if "Function :" in line and instrs:
            break  # a second function: addresses restart
        m = _LINE.search(line)
        if m:
            instrs.append(Instr(int(m.group(1), 16), m.group(3), m.group(4).strip()))
    return instrs


def _branch_target(instr: Instr) -> int | None:
    if instr.opcode.split(".")[0] != "BRA":
        return None
    m = re.search(r"(?:^|\s|`\()0x([0-9a-f]+)", instr.operands)
    return int(m.group(1), 16) if m else None


def find_loops(instrs: list[Instr]) -> list[tuple[int, int]]:
    """(start, end) addresses of every backward branch's range, sorted by start."""
    loops = set()
    for ins in instrs:
        target = _branch_target(ins)
        if target is not None and target < ins.address:  # BRA to itself: the trap at the end
            loops.add((target, ins.address))
    return sorted(loops)


def inner_loops(loops: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The loops that contain no other loop."""
    return [a for a in loops if not any(b != a and a[0] <= b[0] and b[1] <= a[1] for b in loops)]


def access_bits(opcode: str) -> int:
    parts = opcode.split(".")
    for bits in ("128", "64"):
        if bits in parts:
            return int(bits)
    if "U16" in parts or "S16" in parts:
        return 16
    if "U8" in parts or "S8" in parts:
        return 8
    return 32


def _shared_bytes(ins: Instr) -> int:
    """Shared-memory bytes one warp instruction moves (0 for everything else)."""
    head = ins.opcode.split(".")[0]
    if head in ("LDS", "STS", "LDGSTS"):
        return access_bits(ins.opcode) // 8 * 32
    if head == "LDSM":
        m = re.search(r"\.M[T]?88(?:\.(\d))?", ins.opcode)
        return 128 * int(m.group(1) or 1) if m else 0
    return 0


def hgmma_shape(opcode: str) -> tuple[int, int, int, int] | None:
    """(M, N, K, input element bytes) of an HGMMA opcode, e.g. HGMMA.64x128x16.F32.BF16."""
    m = re.match(r"HGMMA\.(\d+)x(\d+)x(\d+)\.\w+\.(\w+)", opcode)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), _ELEMENT_BYTES.get(m.group(4), 4)


@dataclass
class LoopFacts:
    """Per-iteration facts of one loop, per warp unless said otherwise (see the module docstring)."""

    start: int
    end: int
    instructions: int = 0
    hgmma: dict = field(default_factory=dict)  # opcode -> count
    hgmma_a_source: str = ""  # "registers", "shared", "mixed" or "" (no HGMMA)
    hgmma_flops: int = 0  # per warpgroup: sum of 2 M N K
    hgmma_smem_bytes: int = 0  # per warpgroup: operands read from shared memory
    hmma: int = 0
    ffma: int = 0
    wait_depth: int | None = None
    wgmma_groups: int = 0  # WARPGROUP.ARRIVE count
    barriers: int = 0  # BAR.SYNC
    shared_bytes: int = 0  # per warp: LDS/STS/LDSM/LDGSTS
    global_loads: dict = field(default_factory=dict)  # opcode -> count (LDG, LDGSTS, UTMALDG)
    global_load_bytes: int = 0  # per warp, TMA loads not included
    global_store_bytes: int = 0  # per warp: STG, RED, ATOMG

    @property
    def math(self) -> int:
        return sum(self.hgmma.values()) + self.hmma + self.ffma

    def to_dict(self) -> dict:
        return dict(asdict(self), math=self.math, load_width=load_width(self.global_loads))


def load_width(global_loads: dict) -> str:
    """Compact description, widest first: 'LDGSTS.E.BYPASS.128 x4, LDG.E x2'."""
    order = sorted(global_loads, key=lambda op: (-(1 << 20 if op.startswith("UTMA") else access_bits(op)), op))
    return ", ".join(f"{op} x{global_loads[op]}" for op in order)


def loop_facts(instrs: list[Instr], start: int, end: int, exclude=()) -> LoopFacts:
    """Facts of the range [start, end], leaving out the (nested) ranges in ``exclude``."""
    facts = LoopFacts(start, end)
    hgmma, loads, sources, waits = Counter(), Counter(), set(), []
    for ins in instrs:
        if not start <= ins.address <= end or ins.opcode == "NOP":
            continue
        if any(a <= ins.address <= b for a, b in exclude):
            continue
        facts.instructions += 1
        head = ins.opcode.split(".")[0]
        if head == "HGMMA":
            hgmma[ins.opcode] += 1
            shape = hgmma_shape(ins.opcode)
            operands = [o.strip() for o in ins.operands.split(",")]
            a_shared = len(operands) > 1 and operands[1].startswith("gdesc")
            sources.add("shared" if a_shared else "registers")
            if shape:
                m, n, k, eb = shape
                facts.hgmma_flops += 2 * m * n * k
                facts.hgmma_smem_bytes += n * k * eb + (m * k * eb if a_shared else 0)
        elif head == "HMMA":
            facts.hmma += 1
        elif head == "FFMA":
            facts.ffma += 1
        elif ins.opcode.startswith("WARPGROUP.DEPBAR"):
            m = re.search(r"gsb0\s*,\s*(0x[0-9a-f]+|\d+)", ins.operands)
            if m:
                waits.append(int(m.group(1), 0))
        elif ins.opcode.startswith("WARPGROUP.ARRIVE"):
            facts.wgmma_groups += 1
        elif ins.opcode.startswith("BAR.SYNC"):
            facts.barriers += 1
        if head in ("LDG", "LDGSTS", "UTMALDG"):
            loads[ins.opcode] += 1
            if head != "UTMALDG":
                facts.global_load_bytes += access_bits(ins.opcode) // 8 * 32
        elif head in ("STG", "RED", "REDG", "ATOMG"):
            facts.global_store_bytes += access_bits(ins.opcode) // 8 * 32
        facts.shared_bytes += _shared_bytes(ins)
    facts.hgmma, facts.global_loads = dict(hgmma), dict(loads)
    facts.hgmma_a_source = "mixed" if len(sources) > 1 else next(iter(sources), "")
    facts.wait_depth = min(waits) if waits else None
    return facts


@dataclass
class SassFacts:
    """What the gate reports from one cubin's SASS."""

    main_loop: LoopFacts | None
    inner_loops: list[LoopFacts]
    outer_loops: list[LoopFacts]  # loops holding others: their own body, nested loops left out
    tma: bool  # UTMALDG / UTMASTG / UBLKCP anywhere
    widest_global_load: int  # bits, over the whole kernel (0: none)

    def to_dict(self) -> dict:
        return {"main_loop": self.main_loop.to_dict() if self.main_loop else None,
                "inner_loops": [f.to_dict() for f in self.inner_loops],
                "outer_loops": [f.to_dict() for f in self.outer_loops],
                "tma": self.tma, "widest_global_load": self.widest_global_load}


def sass_facts(sass: str) -> SassFacts:
    instrs = parse_instructions(sass)
    ranges = find_loops(instrs)
    inner = inner_loops(ranges)
    loops = [loop_facts(instrs, a, b) for a, b in inner]
    outer = [loop_facts(instrs, a, b, [r for r in ranges if r != (a, b) and a <= r[0] and r[1] <= b])
             for a, b in ranges if (a, b) not in inner]
    math_loops = [f for f in loops if f.math]
    main = max(math_loops, key=lambda f: (bool(f.hgmma or f.hmma), f.math, -f.start)) if math_loops else None
    tma = any(ins.opcode.split(".")[0] in ("UTMALDG", "UTMASTG", "UBLKCP") for ins in instrs)
    widths = [access_bits(ins.opcode) for ins in instrs if ins.opcode.split(".")[0] in ("LDG", "LDGSTS")]
    return SassFacts(main, loops, outer, tma, max(widths, default=0))


def summary(facts: SassFacts) -> dict:
    """The one-line facts of the main loop: HGMMA shapes, A source, wait depth, load width."""
    main = facts.main_loop
    if main is None:
        return {"hgmma": "", "a_source": "", "wait_depth": None, "load_width": "", "barriers": 0}
    shapes = ",".join(op.removeprefix("HGMMA.") + (f" x{c}" if c > 1 else "") for op, c in sorted(main.hgmma.items()))
    return {"hgmma": shapes, "a_source": main.hgmma_a_source, "wait_depth": main.wait_depth,
            "load_width": load_width(main.global_loads), "barriers": main.barriers}
