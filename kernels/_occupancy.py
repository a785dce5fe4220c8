"""CTAs per SM from registers, shared memory and warps, and the waves of a launch grid.

Limits per SM (CUDA C++ Programming Guide, "Compute Capabilities", table of technical
specifications, and the CUDA occupancy calculator's allocation rules):

=================================  ======  ======
                                   sm_80   sm_90
=================================  ======  ======
resident warps                     64      64
resident CTAs                      32      32
32-bit registers                   65536   65536
register allocation unit (a warp)  256     256
warp allocation granularity        4       4
shared memory per SM (bytes)       167936  233472
shared memory reserved per CTA     1024    1024
=================================  ======  ======

Registers are allocated per warp in units of 256 (a thread's count rounded up to a multiple
of 8), and warps in groups of 4 (one per scheduler's register file): warps limited by
registers = floor(65536 / per-warp registers / 4) * 4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: SMs of the target GPU (H200 SXM) for the wave arithmetic.
H200_SMS = 132


@dataclass(frozen=True)
class SMLimits:
    warps: int = 64
    ctas: int = 32
    registers: int = 65536
    register_unit: int = 256
    warp_granularity: int = 4
    shared: int = 233472
    shared_reserved: int = 1024


LIMITS = {80: SMLimits(shared=167936), 90: SMLimits()}


def ctas_per_sm(registers: int, num_warps: int, shared_bytes: int, arch: int) -> tuple[int, str]:
    """(resident CTAs per SM, the limiting resource: 'registers', 'shared', 'warps' or 'ctas')."""
    lim = LIMITS[arch]
    per_warp = math.ceil(registers * 32 / lim.register_unit) * lim.register_unit
    warps_by_regs = (lim.registers // per_warp) // lim.warp_granularity * lim.warp_granularity
    by = {
        "registers": warps_by_regs // num_warps,
        "shared": lim.shared // (shared_bytes + lim.shared_reserved),
        "warps": lim.warps // num_warps,
        "ctas": lim.ctas,
    }
    limit = min(by, key=lambda k: (by[k], list(by).index(k)))
    return by[limit], limit


@dataclass(frozen=True)
class Waves:
    ctas: int
    slots: int  # CTAs the GPU holds at once: SMs x CTAs per SM
    waves: int
    efficiency: float  # (ctas / slots) / waves


def waves(grid: tuple[int, ...], ctas_per_sm: int, sms: int = H200_SMS) -> Waves:
    """Waves of a launch: ceil(CTAs / (SMs x CTAs per SM)), efficiency = the filled fraction."""
    ctas = math.prod(grid)
    slots = sms * max(ctas_per_sm, 1)
    n = max(1, math.ceil(ctas / slots))
    return Waves(ctas, slots, n, ctas / slots / n)
