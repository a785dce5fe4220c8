"""kernels/_smem.py: shared-memory wavefronts of FFMA dot operands.

The rule on hand-made access patterns, the swizzle address and the lane ownership against
triton's own linear layouts, the TTGIR reader and the SASS check on small FFMA kernels compiled
for sm_90 (in a subprocess: the tests run under the interpreter, which replaces every jitted
kernel at import, as in test_compile_gate.py).
"""

import json
import os
import subprocess
import sys
from collections import Counter
from functools import reduce
from itertools import product

import pytest
import triton

from fastgauss.kernels import _smem

pytestmark = pytest.mark.gate

LANES = range(32)


def _words(start_bytes, width_bytes):
    """The 4-byte words of one access per lane: lane L reads width_bytes at start_bytes(L)."""
    return {(start_bytes(lane) + b) // 4 for lane in LANES for b in range(0, width_bytes, 4)}


def test_wavefront_rule_on_hand_made_patterns():
    assert _smem.wavefronts(_words(lambda lane: 0, 16)) == 1  # LDS.128, every lane one address: broadcast
    assert _smem.wavefronts(_words(lambda lane: 16 * lane, 16)) == 4  # 512 contiguous bytes
    assert _smem.wavefronts(_words(lambda lane: 256 * lane, 16)) == 32  # stride 256 B: one set of 4 banks
    assert _smem.wavefronts(_words(lambda lane: 8 * lane, 4)) == 2  # LDS.32, stride 8 B: 2-way conflict
    assert _smem.wavefronts(_words(lambda lane: 4 * lane, 4)) == 1  # LDS.32, one word a bank
    assert _smem.wavefronts(_words(lambda lane: 128 * (lane % 2), 16)) == 2  # two rows, same banks
    assert _smem.wavefronts(_words(lambda lane: 4 * (lane % 4), 4)) == 1  # 4 words, 8 lanes each
    assert _smem.wavefronts(set()) == 0


# (row, col) -> offset of a 16 x 32 buffer, order [1, 0] (col contiguous), vec 4, perPhase 2,
# maxPhase 4, worked by hand from Triton's rule: phase = (row // 2) % 4, col' = ((col // 4) ^ phase)
# * 4 + col % 4, offset = 32 row + col'.
HAND = {(0, 0): 0, (0, 5): 5, (1, 0): 32, (2, 4): 64, (2, 0): 68, (4, 8): 128, (6, 12): 192,
        (7, 13): 7 * 32 + 1, (8, 0): 256, (15, 31): 15 * 32 + ((7 ^ 3) * 4 + 3)}


def test_swizzle_formula_on_hand_worked_values():
    for coord, offset in HAND.items():
        assert _smem.swizzled_offset(coord, [16, 32], 4, 2, 4, [1, 0]) == offset, coord
    # order [0, 1]: dim 0 contiguous, so the roles swap; no swizzle: plain column-major
    assert _smem.swizzled_offset((3, 5), [16, 128], 1, 1, 1, [0, 1]) == 5 * 16 + 3
    assert _smem.swizzled_offset((5, 3), [16, 8], 2, 1, 8, [0, 1]) == 3 * 16 + ((2 ^ 3) * 2 + 1)
    assert _smem.swizzled_offset((7,), [16], 4, 2, 4, [0]) == 7


#: Layouts whose linear layouts the subprocess asks triton for (the oracle).
SHARED = [([16, 32], 4, 2, 4, [1, 0]), ([32, 16], 2, 1, 8, [0, 1]), ([16, 128], 1, 1, 1, [0, 1]),
          ([64, 64], 4, 1, 8, [1, 0]), ([8, 64], 8, 2, 4, [1, 0])]
BLOCKED = [([4, 4], [1, 32], [8, 1], [1, 0]), ([4, 4], [2, 16], [4, 1], [1, 0]), ([1, 4], [8, 4], [8, 1], [1, 0]),
           ([4, 1], [32, 1], [1, 8], [0, 1]), ([2, 2], [4, 8], [2, 2], [0, 1])]
SHAPES = [[128, 128], [64, 64], [16, 64]]

SCRIPT = r"""
import json, sys
import triton, triton.language as tl
from triton._C.libtriton import ir
from triton._C.libtriton.gluon_ir import GluonOpBuilder
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fastgauss.kernels import _sass, _smem, check

SHARED, BLOCKED, SHAPES = json.loads(sys.argv[1])
MODE = sys.argv[2]  # shared, distributed or builds


@triton.jit
def _mm(a_ptr, b_ptr, c_ptr, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, B_K_MAJOR: tl.constexpr):
    rm, rn, rk = tl.arange(0, BM), tl.arange(0, BN), tl.arange(0, BK)
    acc = tl.zeros((BM, BN), tl.float32)
    for k0 in range(0, K, BK):
        a = tl.load(a_ptr + rm[:, None] * K + (k0 + rk)[None, :])
        if B_K_MAJOR:  # b stored [N, K]: the tile is a transposed view, k contiguous
            b = tl.trans(tl.load(b_ptr + rn[:, None] * K + (k0 + rk)[None, :]))
        else:  # b stored [K, N]: n contiguous
            b = tl.load(b_ptr + (k0 + rk)[:, None] * BN + rn[None, :])
        acc += tl.dot(a, b, input_precision="ieee")
    tl.store(c_ptr + rm[:, None] * BN + rn[None, :], acc)


def bases(ll):
    return {k: getattr(ll, k) for k in ("reg_bases", "lane_bases", "warp_bases") if hasattr(ll, k)}


ctx = ir.context()
ir.load_dialects(ctx)
b = GluonOpBuilder(ctx)


def blocked(spt, tpw, wpc, order):
    try:  # triton 3.9: CGA bases; earlier: CTAs per CGA, split and order
        return b.get_blocked_layout(spt, tpw, wpc, order, [])
    except TypeError:
        return b.get_blocked_layout(spt, tpw, wpc, order, [1] * len(order), [1] * len(order), order)


def swizzled(vec, per_phase, max_phase, order):
    try:
        return b.get_swizzled_shared_layout(vec, per_phase, max_phase, order, [])
    except TypeError:
        return b.get_swizzled_shared_layout(vec, per_phase, max_phase, order, [1] * len(order), [1] * len(order),
                                            order)


out = {}
if MODE == "shared":  # a C++ assertion aborts this on triton 3.6: its own process
    out["shared"] = [b.to_linear_layout(swizzled(v, p, m, o), s).offset_bases for s, v, p, m, o in SHARED]
if MODE == "distributed":
    out["blocked"] = []
    for (spt, tpw, wpc, order), shape in zip(BLOCKED, SHAPES * 2):
        bl = blocked(spt, tpw, wpc, order)
        out["blocked"].append({"blocked": bases(b.to_linear_layout(bl, shape)),
                               "slice0": bases(b.to_linear_layout(b.get_slice_layout(0, bl), shape[1:])),
                               "a": bases(b.to_linear_layout(b.get_dot_operand_layout(0, bl, 0), [shape[0], 16])),
                               "b": bases(b.to_linear_layout(b.get_dot_operand_layout(1, bl, 0), [16, shape[1]]))})
sig = {"a_ptr": "*fp32", "b_ptr": "*fp32", "c_ptr": "*fp32", "K": "i32", "BM": "constexpr", "BN": "constexpr",
       "BK": "constexpr", "B_K_MAJOR": "constexpr"}
for bm, bn, warps, kmajor in ((64, 64, 4, False), (64, 64, 4, True), (128, 64, 8, True)) if MODE == "builds" else ():
    consts = {"BM": bm, "BN": bn, "BK": 16, "B_K_MAJOR": kmajor}
    s, c, attrs, _ = check.specialise(_mm, sig, consts, {"K": 4096})
    compiled = triton.compile(ASTSource(fn=_mm, signature=s, constexprs=c, attrs=attrs),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": 2})
    _, sass = check._dump(compiled.asm["cubin"])
    ttgir = compiled.asm["ttgir"]
    main = _sass.sass_facts(sass).main_loop.to_dict()
    aliases = _smem.parse_aliases(ttgir)
    loads = [o for o in _smem.parse_loads(ttgir) if o["op"] == "load" and "dot_op" in o["layout"]]
    oracle = []
    for load in loads:  # triton's own linear layout of the operand; its shared buffer's parameters
        idx, parent = int(load["layout"].split("opIdx = ")[1][0]), load["layout"].split("parent = ")[1].split("}")[0]
        p = aliases[parent]
        reg = b.get_dot_operand_layout(idx, blocked(p["sizePerThread"], p["threadsPerWarp"], p["warpsPerCTA"],
                                                    p["order"]), 0)
        oracle.append({"reg": bases(b.to_linear_layout(reg, load["shape"])), "shared": aliases[load["shared"]],
                       "alloc": load["alloc"]})
    result = check.compile_entry("mm", _mm, sig, consts, warps, 2, False, 90, int_args={"K": 4096})
    out.setdefault("builds", []).append({"consts": consts, "warps": warps, "ttgir": ttgir, "sass": sass,
                                         "main": main, "oracle": oracle, "result": result.to_dict()})
print(json.dumps(out))
"""


def _run(tmp_path_factory, mode):
    script = tmp_path_factory.mktemp("smem") / "smem_oracle.py"  # @triton.jit needs a source file
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, str(script), json.dumps([SHARED, BLOCKED, SHAPES]), mode],
                          capture_output=True, text=True, env=env, timeout=600)


def _output(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return _output(_run(tmp_path_factory, "builds"))


@pytest.fixture(scope="module")
def distributed(tmp_path_factory):
    return _output(_run(tmp_path_factory, "distributed"))


@pytest.fixture(scope="module")
def shared_oracle(tmp_path_factory):
    proc = _run(tmp_path_factory, "shared")
    if proc.returncode != 0 and tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 9):
        # Triton 3.6's gluon asserts when asked for a shared layout's linear layout: the hand-worked
        # values above check the formula there.
        pytest.skip(f"triton {triton.__version__} cannot give a shared layout's linear layout")
    return _output(proc)


def _xor(vectors):
    return tuple(reduce(lambda a, b: [x ^ y for x, y in zip(a, b)], vectors, [0] * len(vectors[0])))


def _expand(bases, rank):
    """{(warp, lane): set of coordinates} of a distributed linear layout (coordinate = XOR of the
    bases of the set bits of register, lane and warp)."""
    zero = [[0] * rank]
    out = {}
    for warp, lane in product(range(1 << len(bases["warp_bases"])), LANES):
        fixed = [v for i, v in enumerate(bases["lane_bases"]) if lane >> i & 1]
        fixed += [v for i, v in enumerate(bases["warp_bases"]) if warp >> i & 1]
        out[(warp, lane)] = {_xor(zero + fixed + [v for i, v in enumerate(bases["reg_bases"]) if r >> i & 1])
                             for r in range(1 << len(bases["reg_bases"]))}
    return out


def test_swizzle_formula_matches_triton_linear_layout(shared_oracle):
    for (shape, vec, per_phase, max_phase, order), offset_bases in zip(SHARED, shared_oracle["shared"]):
        for offset in range(shape[0] * shape[1]):
            coord = _xor([[0, 0]] + [v for i, v in enumerate(offset_bases) if offset >> i & 1])
            assert _smem.swizzled_offset(coord, shape, vec, per_phase, max_phase, order) == offset, (shape, coord)


def test_lane_ownership_matches_triton_linear_layout(distributed):
    """Blocked layouts, their slices and their FMA dot operands: which elements each lane of each
    warp holds, from the layout attributes alone, against triton's linear layouts."""
    for (spt, tpw, wpc, order), shape, oracle in zip(BLOCKED, SHAPES * 2, distributed["blocked"]):
        text = "#blocked"
        aliases = {text: {"kind": "blocked", "sizePerThread": spt, "threadsPerWarp": tpw, "warpsPerCTA": wpc,
                          "order": order}}
        cases = [(text, shape, oracle["blocked"]),
                 ("#ttg.slice<{dim = 0, parent = #blocked}>", shape[1:], oracle["slice0"]),
                 ("#ttg.dot_op<{opIdx = 0, parent = #blocked}>", [shape[0], 16], oracle["a"]),
                 ("#ttg.dot_op<{opIdx = 1, parent = #blocked}>", [16, shape[1]], oracle["b"])]
        for layout, tensor_shape, bases in cases:
            want = _expand(bases, len(tensor_shape))
            for (warp, lane), coords in want.items():
                got = _smem.owner(layout, aliases, tensor_shape, warp, lane)
                assert set(got.values()) == coords, (spt, tpw, wpc, layout, warp, lane)


def _oracle_wavefronts(case, num_warps):
    """(wavefronts, accesses, width bits) per warp of one fp32 operand load from triton's linear
    layout of the operand (addresses: the swizzle formula, checked against triton above): the vector
    is the largest set of register bases that land on offsets 1, 2 (16 bytes at most); every other
    register combination is one access."""
    sh = case["shared"]

    def offset(coord):
        return _smem.swizzled_offset(coord, case["alloc"], sh["vec"], sh["perPhase"], sh["maxPhase"], sh["order"])

    regs, lanes, warps = case["reg"]["reg_bases"], case["reg"]["lane_bases"], case["reg"]["warp_bases"]
    offsets = [offset(tuple(v)) for v in regs]
    vector = []
    while len(vector) < 2 and (1 << len(vector)) in offsets:
        vector.append(offsets.index(1 << len(vector)))
    rest = [regs[i] for i in range(len(regs)) if i not in vector]
    total = 0
    for warp, r in product(range(num_warps), range(1 << len(rest))):
        words = set()
        for lane in LANES:
            picked = [v for i, v in enumerate(rest) if r >> i & 1] + [v for i, v in enumerate(lanes) if lane >> i & 1]
            coord = _xor([[0, 0]] + picked + [v for i, v in enumerate(warps) if warp >> i & 1])
            words |= {offset(coord) ^ e for e in range(1 << len(vector))}  # fp32: an element is a word
        total += _smem.wavefronts(words)
    return total / num_warps, 1 << len(rest), 32 << len(vector)


def test_real_ffma_kernels_against_the_sass_and_triton_layouts(compiled):
    """Three FFMA dots compiled for sm_90 as the JIT would: the simulation agrees with the SASS's LDS
    (consistency flag), the gate result carries it, and every operand's accesses and wavefronts
    equal those computed from triton's own linear layouts."""
    by_kmajor = {}
    for build in compiled["builds"]:
        warps, consts = build["warps"], build["consts"]
        facts = _smem.gate_facts(build["ttgir"], build["sass"], build["main"], warps)
        assert facts["smem_consistent"], facts["smem_note"]
        assert build["main"]["ffma"] == consts["BM"] * consts["BN"] * 16 // (32 * warps)
        r = build["result"]
        assert r["smem_consistent"] and r["smem_wavefronts"] == facts["smem_wavefronts"] and not r["error"]
        ops = facts["smem_wavefronts"]
        assert set(ops) == {"A", "B"} and len(build["oracle"]) == 2
        for key, case in zip("AB", build["oracle"]):
            wf, accesses, width = _oracle_wavefronts(case, warps)
            assert (ops[key]["accesses"], ops[key]["width_bits"], ops[key]["wavefronts"]) == (accesses, width, wf), key
            assert ops[key]["bytes"] == accesses * width // 8 * 32
        by_kmajor[(consts["BM"], consts["B_K_MAJOR"])] = ops["B"]
    # the transposed (k-contiguous) B tile is bank-conflicted, the n-contiguous one is not
    n_major, k_major = by_kmajor[(64, False)], by_kmajor[(64, True)]
    assert n_major["wavefronts"] <= n_major["accesses"] * n_major["width_bits"] // 32
    assert k_major["wavefronts"] > 2 * k_major["accesses"] * k_major["width_bits"] // 32


def _ttgir(b_layout="#shared1", b_shape="16x64"):
    return f"""#blocked = #ttg.blocked<{{sizePerThread = [4, 4], threadsPerWarp = [2, 16], warpsPerCTA = [4, 1], order = [1, 0]}}>
#shared = #ttg.swizzled_shared<{{vec = 1, perPhase = 1, maxPhase = 1, order = [1, 0]}}>
#shared1 = #ttg.swizzled_shared<{{vec = 1, perPhase = 1, maxPhase = 1, order = [0, 1]}}>
#smem = #ttg.shared_memory
module {{
  tt.func public @k() {{
    %r:2 = scf.for %i = %c0 to %n step %c16 iter_args(%acc = %z) -> (tensor<64x64xf32, #blocked>)  : i32 {{
      %a = ttg.local_load %x token %t : !ttg.memdesc<64x16xf32, #shared, #smem, mutable> -> tensor<64x16xf32, #ttg.dot_op<{{opIdx = 0, parent = #blocked}}>> loc(#loc1)
      %b = ttg.local_load %y : !ttg.memdesc<{b_shape}xf32, {b_layout}, #smem, mutable> -> tensor<16x64xf32, #ttg.dot_op<{{opIdx = 1, parent = #blocked}}>> loc(#loc2)
      %d = tt.dot %a, %b, %acc : tensor<64x16xf32, #ttg.dot_op<{{opIdx = 0, parent = #blocked}}>> * tensor<16x64xf32, #ttg.dot_op<{{opIdx = 1, parent = #blocked}}>> -> tensor<64x64xf32, #blocked> loc(#loc3)
      scf.yield %d : tensor<64x64xf32, #blocked>
    }} loc(#loc4)
    tt.return
  }}
}}
"""


def _sass_loop(lds):
    lines = [f"        /*{16 * i:04x}*/                   {op} ;" for i, op in enumerate(lds)]
    return "\n".join(lines + [f"        /*{16 * len(lds):04x}*/                   @P0 BRA 0x0 ;"])


def test_ttgir_reader_and_sass_check_on_a_hand_written_loop():
    """4 warps, lanes [2, 16] over a 64 x 64 tile: A (k contiguous) 2 rows of lanes 256 B apart ->
    2 wavefronts an LDS.128; B (k contiguous, columns 4 apart = 256 B) 16 distinct addresses in 4
    banks -> 16; with B n-contiguous: 16 lanes x 16 B contiguous -> 2."""
    text = _ttgir()
    ops = _smem.ffma_operands(text, 4)
    assert ops["operands"]["A"] == {"accesses": 32, "bytes": 32 * 512, "wavefronts": 64, "width_bits": 128}
    assert ops["operands"]["B"] == {"accesses": 16, "bytes": 16 * 512, "wavefronts": 256, "width_bits": 128}
    assert ops["lds"] == Counter({128: 48}) and ops["ffma"] == 64 * 64 * 16 // 128 and ops["dots"] == 1
    n_major = _smem.ffma_operands(_ttgir("#shared"), 4)["operands"]["B"]
    assert n_major == {"accesses": 16, "bytes": 16 * 512, "wavefronts": 32, "width_bits": 128}
    main = {"start": 0, "end": 16 * 49, "ffma": 512, "hgmma": {}, "hmma": 0}
    sass = _sass_loop(["LDS.128 R4, [R2]"] * 48 + ["LDS RZ, [RZ]"])
    facts = _smem.gate_facts(text, sass, main, 4)
    assert facts["smem_consistent"] and not facts["smem_note"] and facts["smem_wavefronts"] == ops["operands"]
    bad = _smem.gate_facts(text, _sass_loop(["LDS.128 R4, [R2]"] * 47 + ["LDS.64 R4, [R2]"]), main, 4)
    assert not bad["smem_consistent"] and "LDS.64 x1" in bad["smem_note"]
    assert "FFMA" in _smem.gate_facts(text, sass, dict(main, ffma=256), 4)["smem_note"]
    assert _smem.gate_facts(text, sass, dict(main, hgmma={"HGMMA.64x64x8.F32.TF32": 1}), 4) == {}
    unknown = _smem.gate_facts(_ttgir("#nvmma"), sass, main, 4)
    assert unknown["smem_consistent"] is False and "not simulated" in unknown["smem_note"]


def test_ttgir_reader_follows_regions():
    """An scf.if / else before the loads does not end the loop (the '} else {' line closes one region
    and opens the next); a dot outside every loop is not an FFMA main-loop dot."""
    body = _ttgir().splitlines()
    at = next(i for i, line in enumerate(body) if "ttg.local_load %x" in line)
    branch = ["      %c = scf.if %p -> (i32) {", "        scf.yield %u : i32", "      } else {",
              "        scf.yield %v : i32", "      } loc(#loc9)"]
    text = "\n".join(body[:at] + branch + body[at:])
    ops = _smem.parse_loads(text)
    assert [(o["op"], o["loop"]) for o in ops] == [("load", 0), ("load", 0), ("dot", 0)]
    assert _smem.ffma_operands(text, 4) == _smem.ffma_operands(_ttgir(), 4)
    outside = "\n".join(line for line in _ttgir().splitlines() if "scf.for" not in line and "scf.yield" not in line
                        and not line.strip().startswith("} loc(#loc4)"))
    assert [o["loop"] for o in _smem.parse_loads(outside)] == [None, None, None]
    assert _smem.ffma_operands(outside, 4) == {}
