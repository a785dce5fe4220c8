"""The cheaper forward-mode rules give PyTorch's derivatives (float64), in forward and reverse mode."""

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import fastgauss
from fastgauss.diagnostics import tangent_rules as rules
from fastgauss.diagnostics.tangent_rules import cheaper_tangents
from helpers import rel_err

jvp_module = importlib.import_module("fastgauss.diagnostics.jvp")


def _probes_jvp(f, x, v):
    with sdpa_kernel(SDPBackend.MATH):  # PyTorch's fused attention kernels have no forward mode
        return torch.func.vmap(lambda t: torch.func.jvp(f, (x,), (t,)), out_dims=(None, 0))(v)


def _params(g, *shapes):
    return [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]


def _layers(g):
    """name -> (f: x -> y, x [B, ...]) covering each rule and its tangent terms."""
    w2, b2, wt, w1, w3 = _params(g, (6, 2, 3, 3), (6,), (4, 3, 3, 2), (5, 4, 3), (3, 4, 2, 2, 2))
    gw, gb, lw, lb = _params(g, (4,), (4,), (5,), (5,))
    x4, x3, x5 = _params(g, (3, 4, 7, 6), (3, 4, 9), (2, 4, 3, 4, 5))
    proj = _params(g, (5, 5))[0]

    def attention_self(x):  # x [B, L, E]: q, k and v all carry tangents
        return F.scaled_dot_product_attention(x, x @ proj, torch.tanh(x))

    context = _params(g, (3, 4, 5))[0]

    def attention_cross(x):  # only q carries a tangent
        return F.scaled_dot_product_attention(x, context, context, scale=0.3)

    return {
        "conv2d groups, dilation, bias": (lambda x: F.conv2d(x, w2, b2, padding=2, dilation=2, groups=2), x4),
        "conv2d weight from x": (lambda x: F.conv2d(x, w2 * x.mean(), x[0, 0, 0, :6].sum() * b2, groups=2), x4),
        "conv1d stride": (lambda x: F.conv1d(x, w1, None, stride=2), x3),
        "conv3d": (lambda x: F.conv3d(x, w3, padding=1), x5),
        "conv_transpose2d": (lambda x: F.conv_transpose2d(x, wt, None, stride=2, padding=1, output_padding=1), x4),
        "silu": (F.silu, x4),
        "group_norm affine": (lambda x: F.group_norm(x, 2, gw, gb), x4),
        "group_norm plain": (lambda x: F.group_norm(x, 4), x4),
        "group_norm weight from x": (lambda x: F.group_norm(x, 2, gw * x.sum(), gb * x.mean()), x4),
        "layer_norm": (lambda x: F.layer_norm(x, (5,), lw, lb), _params(g, (3, 4, 5))[0]),
        "attention self": (attention_self, _params(g, (2, 3, 6, 5))[0]),
        "attention cross": (attention_cross, _params(g, (3, 6, 5))[0]),
    }


@pytest.mark.parametrize("name", list(_layers(torch.Generator())))
def test_rules_match_pytorch_forward_mode(name):
    g = torch.Generator().manual_seed(hash(name) % 2**31)
    f, x = _layers(g)[name]
    v = torch.randn((4,) + tuple(x.shape), generator=g, dtype=torch.float64)
    expected_primal, expected = _probes_jvp(f, x, v)
    with cheaper_tangents():
        primal, tangents = _probes_jvp(f, x, v)
    assert torch.equal(primal, expected_primal)  # the primal is PyTorch's op, bit for bit
    assert rel_err(tangents, expected) < 1e-12


@pytest.mark.parametrize("name", ["conv2d groups, dilation, bias", "group_norm affine", "layer_norm",
                                  "attention self", "silu"])
def test_rules_keep_reverse_mode_exact(name):
    """The gradient of a loss on the primal and on J v, against central differences along u.

    Finite differences rather than PyTorch: PyTorch 2.13's own reverse-over-forward
    derivative of layer_norm is wrong (-33.3 where the differences give 6.47); the rule is right.
    """
    g = torch.Generator().manual_seed(7)
    f, x = _layers(g)[name]
    v, u = (torch.randn(x.shape, generator=g, dtype=torch.float64) for _ in range(2))
    weights = torch.randn(f(x).shape, generator=g, dtype=torch.float64)

    def loss(at):
        with sdpa_kernel(SDPBackend.MATH), cheaper_tangents():
            primal, tangent = torch.func.jvp(f, (at,), (v,))
        return (primal * weights).sum() + (tangent * weights).square().sum()

    leaf = x.clone().requires_grad_()
    along_u = (torch.autograd.grad(loss(leaf), leaf)[0] * u).sum()
    h = 1e-6
    with torch.no_grad():
        differences = (loss(x + h * u) - loss(x - h * u)) / (2 * h)
    assert abs(along_u - differences) < 1e-6 * max(1.0, abs(differences))


def test_uncovered_options_keep_pytorch_rules():
    g = torch.Generator().manual_seed(3)
    q, v = _params(g, (2, 5, 4), (3, 2, 5, 4))
    mask = torch.rand(5, 5, generator=g) > 0.3
    mask.fill_diagonal_(True)
    for f in (lambda t: F.scaled_dot_product_attention(t, t, t, attn_mask=mask),
              lambda t: F.scaled_dot_product_attention(t, t, t, is_causal=True),
              lambda t: F.silu(t.clone(), inplace=True)):
        expected = _probes_jvp(f, q, v)[1]
        with cheaper_tangents():
            assert rel_err(_probes_jvp(f, q, v)[1], expected) < 1e-12


def test_small_calls_keep_pytorch_rules(monkeypatch):
    """Below min_elements the rule is not taken: the bookkeeping would cost more than it saves."""
    calls, original = [], rules._RULES[F.silu]
    monkeypatch.setitem(rules._RULES, F.silu, lambda args, kwargs: calls.append(args[0].shape) or original(args, kwargs))
    x, v = torch.randn(2, 8), torch.randn(4, 2, 8)
    with cheaper_tangents(probes=4, min_elements=4 * 16 + 1):
        _probes_jvp(F.silu, x, v)
    assert calls == []
    with cheaper_tangents(probes=4, min_elements=4 * 16):
        _probes_jvp(F.silu, x, v)
    assert calls == [torch.Size([2, 8])]


def test_fastgauss_jvp_with_the_rules_on_a_network(monkeypatch):
    from test_diagnostics import TinyUNetish
    torch.manual_seed(0)
    net = TinyUNetish().double().eval()
    x, v = torch.randn(2, 1, 4, 4, dtype=torch.float64), torch.randn(5, 2, 1, 4, 4, dtype=torch.float64)
    monkeypatch.setattr(jvp_module, "RULE_MIN_ELEMENTS", 1 << 40)
    d0, jv0 = fastgauss.jvp(net, x, 0.4, v)
    monkeypatch.setattr(jvp_module, "RULE_MIN_ELEMENTS", 0)
    d1, jv1 = fastgauss.jvp(net, x, 0.4, v, chunk=2)
    assert torch.equal(d0, d1)
    assert rel_err(jv1, jv0) < 1e-12
