"""The compile gate's facts without compiling: the SASS parser on a known listing, the JIT's
specialisation rule, occupancy and waves, and how targets become builds."""

import types

import pytest

from fastgauss.kernels import _occupancy, _sass, check

#: A hand-written sm_90 listing: a prologue, one loop (0x20..0xb0) with two HGMMAs (A from shared
#: memory, then from registers), a wait that leaves one group in flight, shared and global
#: traffic, an epilogue and the trap branch to itself that ends every Triton kernel.
SASS = """
	code for sm_90a
		Function : k
        /*0000*/                   LDC R1, c[0x0][0x28] ;                       /* 0x0 */
        /*0010*/                   LDG.E.64 R2, desc[UR4][R2.64] ;              /* 0x0 */
        /*0020*/                   LDGSTS.E.BYPASS.128 [R72], desc[UR32][R6.64], P2 ;
        /*0030*/                   WARPGROUP.ARRIVE ;
        /*0040*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR12], R24, gsb0 ;
        /*0050*/                   HGMMA.64x128x16.F32.BF16 R24, R56, gdesc[UR12].tnspB, R24, gsb0 ;
        /*0060*/                   WARPGROUP.DEPBAR.LE gsb0, 0x1 ;
        /*0070*/                   LDS.128 R8, [R3] ;
        /*0080*/                   STS.64 [R3], R8 ;
        /*0090*/                   LDSM.16.M88.4 R8, [R3] ;
        /*00a0*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*00b0*/              @!P0 BRA 0x20 ;
        /*00c0*/                   FFMA R1, R2, R3, R4 ;
        /*00d0*/                   NOP ;
        /*00e0*/                   STG.E [R2.64], R1 ;
        /*00f0*/                   EXIT ;
        /*0100*/                   BRA 0x100;
"""


def test_sass_loop_facts_of_a_known_listing():
    facts = _sass.sass_facts(SASS)
    loop = facts.main_loop
    assert (loop.start, loop.end) == (0x20, 0xB0) and len(facts.inner_loops) == 1 and not facts.outer_loops
    assert loop.instructions == 10
    assert loop.hgmma == {"HGMMA.64x128x16.F32.BF16": 2} and loop.hgmma_a_source == "mixed"
    assert loop.hgmma_flops == 2 * (2 * 64 * 128 * 16)
    assert loop.hgmma_smem_bytes == (128 * 16 * 2 + 64 * 16 * 2) + 128 * 16 * 2  # B twice, A once
    assert (loop.wait_depth, loop.wgmma_groups, loop.barriers) == (1, 1, 1)
    assert loop.shared_bytes == 16 * 32 + 16 * 32 + 8 * 32 + 4 * 128  # LDGSTS, LDS.128, STS.64, LDSM x4
    assert loop.global_loads == {"LDGSTS.E.BYPASS.128": 1} and loop.global_load_bytes == 512
    assert loop.ffma == 0 and loop.global_store_bytes == 0  # the FFMA and STG are after the loop
    assert facts.widest_global_load == 128 and not facts.tma
    assert _sass.summary(facts) == {"hgmma": "64x128x16.F32.BF16 x2", "a_source": "mixed", "wait_depth": 1,
                                    "load_width": "LDGSTS.E.BYPASS.128 x1", "barriers": 1}


def test_sass_wait_depth_zero_registers_tma_and_nested_loops():
    sass = """
        /*0000*/                   UTMALDG.2D [UR8], [UR4] ;
        /*0010*/                   FFMA R1, R2, R3, R4 ;
        /*0020*/                   LDG.E.U16 R2, desc[UR4][R2.64] ;
        /*0030*/                   WARPGROUP.ARRIVE ;
        /*0040*/                   HGMMA.64x8x8.F32.TF32 R24, R56, gdesc[UR12], R24, gsb0 ;
        /*0050*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
        /*0060*/               @P1 BRA 0x20 ;
        /*0070*/                   FFMA R1, R2, R3, R4 ;
        /*0080*/               @P2 BRA 0x10 ;
    """
    facts = _sass.sass_facts(sass)
    assert facts.tma and facts.widest_global_load == 16
    inner, outer = facts.inner_loops, facts.outer_loops
    assert [(f.start, f.end) for f in inner] == [(0x20, 0x60)] and facts.main_loop is inner[0]
    assert facts.main_loop.hgmma_a_source == "registers" and facts.main_loop.wait_depth == 0
    assert facts.main_loop.hgmma_smem_bytes == 8 * 8 * 4  # B only: A is in registers
    assert [(f.start, f.end, f.instructions, f.ffma) for f in outer] == [(0x10, 0x80, 3, 2)]  # inner left out
    assert _sass.load_width({"LDG.E": 2, "UTMALDG.2D": 1, "LDG.E.128": 1}) == "UTMALDG.2D x1, LDG.E.128 x1, LDG.E x2"


def test_sass_main_loop_prefers_tensor_core_loops_and_ignores_loopless_code():
    sass = """
        /*0000*/                   FFMA R1, R2, R3, R4 ;
        /*0010*/                   FFMA R1, R2, R3, R4 ;
        /*0020*/               @P1 BRA 0x0 ;
        /*0030*/                   HMMA.1688.F32.TF32 R4, R8, R12, R4 ;
        /*0040*/               @P1 BRA 0x30 ;
    """
    assert (_sass.sass_facts(sass).main_loop.start, _sass.sass_facts(sass).main_loop.hmma) == (0x30, 1)
    assert _sass.sass_facts("        /*0000*/                   EXIT ;").main_loop is None
    assert _sass.summary(_sass.sass_facts(""))["wait_depth"] is None


@pytest.mark.parametrize("opcode,bits", [("LDG.E", 32), ("LDG.E.64", 64), ("LDGSTS.E.BYPASS.128", 128),
                                         ("LDG.E.U16", 16), ("LDG.E.S8", 8), ("LDS.U.128", 128)])
def test_sass_access_width(opcode, bits):
    assert _sass.access_bits(opcode) == bits


@pytest.mark.parametrize("regs,warps,smem,arch,expected", [
    (100, 8, 53504, 90, (2, "registers")),   # 3328 registers a warp -> 19 warps -> 16 -> 2 CTAs of 8
    (168, 4, 49152, 90, (3, "registers")),   # 5376 a warp -> 12 warps -> 3 CTAs of 4
    (100, 2, 0, 90, (8, "registers")),       # 19 warps by registers, allocated in fours: 16, not 19 // 2 = 9
    (212, 8, 65792, 80, (1, "registers")),   # 6912 a warp -> 9 -> 8 warps
    (32, 4, 100000, 80, (1, "shared")),      # 167936 // 101024
    (24, 4, 1000, 90, (16, "warps")),        # 64 warps // 4 (registers would allow 21)
    (16, 1, 0, 90, (32, "ctas")),
])
def test_occupancy(regs, warps, smem, arch, expected):
    assert _occupancy.ctas_per_sm(regs, warps, smem, arch) == expected


def test_waves_and_wave_efficiency():
    w = _occupancy.waves((16, 17), 1)
    assert (w.ctas, w.slots, w.waves) == (272, 132, 3) and w.efficiency == pytest.approx(272 / 396)
    w = _occupancy.waves((16, 16), 2)
    assert (w.waves, w.efficiency) == (1, pytest.approx(256 / 264))
    assert _occupancy.waves((132,), 1).efficiency == 1.0
    assert check.target_row("x", (16, 17), 2)["wave_efficiency"] == round(272 / 528, 4)


def test_specialise_like_the_jit():
    fn = types.SimpleNamespace(params=None)
    sig = {"x_ptr": "*fp32", "n": "i32", "one": "i32", "odd": "i32", "B": "constexpr"}
    signature, constexprs, attrs, key = check.specialise(fn, sig, {"B": 64}, {"n": 3072, "one": 1, "odd": 17})
    assert key == "DD1-c"
    assert attrs == {(0,): [["tt.divisibility", 16]], (1,): [["tt.divisibility", 16]]}
    assert signature["one"] == "constexpr" and constexprs == {"B": 64, "one": 1} and signature["odd"] == "i32"
    assert check.specialise(fn, sig, {"B": 64}, None)[3] == "D---c"  # the odd build: pointers aligned only
    with pytest.raises(KeyError, match="odd"):
        check.specialise(fn, sig, {"B": 64}, {"n": 16, "one": 1})


def test_plan_compiles_one_build_per_distinct_specialisation():
    fn = types.SimpleNamespace(params=None)
    entry = ("k[a]", fn, {"p": "*fp32", "n": "i32"}, {}, 4, 3, False)
    module = types.SimpleNamespace(
        __name__="fake", gate_entries=lambda: [entry],
        gate_targets=lambda: [("k[a]", "n=32", {"n": 32}, (2,)), ("k[a]", "n=48", {"n": 48}, (3,)),
                              ("k[a]", "n=1", {"n": 1}, (1,))])
    builds = check.plan(module)
    assert [(b[1], b[2]) for b in builds] == [(None, None), (90, {"n": 32}), (90, {"n": 1})]
    assert [t[0] for t in builds[1][3]] == ["n=32", "n=48"] and builds[2][3][0][1] == (1,)
    module.gate_targets = lambda: [("k[b]", "n=32", {"n": 32}, (2,))]
    with pytest.raises(KeyError, match=r"k\[b\]"):
        check.plan(module)


def test_an_entry_launched_only_aligned_gets_an_aligned_build_instead_of_the_odd_one():
    fn = types.SimpleNamespace(params=None)
    entry = ("k[a]", fn, {"p": "*fp32", "n": "i32", "d": "i32", "t": "i32"}, {}, 4, 3, False)
    module = types.SimpleNamespace(__name__="fake", gate_entries=lambda: [entry],
                                   gate_aligned=lambda: [("k[a]", {"d": 16, "t": 1})])
    builds = check.plan(module)
    assert [(b[1], b[2]) for b in builds] == [(None, {"n": 7, "d": 16, "t": 1})]
    assert check.specialise(fn, entry[2], {}, builds[0][2])[3] == "D-D1"  # d hinted, t constant, n not
    module.gate_aligned = lambda: [("k[z]", {"d": 16})]
    with pytest.raises(KeyError, match=r"k\[z\]"):
        check.plan(module)


def test_every_family_names_real_entries_in_its_targets():
    import importlib

    from fastgauss.kernels import KERNEL_MODULES

    for name in KERNEL_MODULES:
        module = importlib.import_module(f"fastgauss.kernels.{name}")
        entries = {e[0]: e for e in module.gate_entries()}
        targets = list(module.gate_targets())
        assert targets, name
        for entry_name, shape, int_args, grid in targets:
            entry = entries[entry_name]
            assert check.specialise(types.SimpleNamespace(params=None), entry[2], entry[3], int_args)[3]
            assert all(isinstance(g, int) and g > 0 for g in grid) and "=" in shape
