"""The one precision vocabulary: the names of the fp32 product modes, what each means, and which
family takes which.

A ``precision=`` argument names how a kernel computes the products of fp32 operands (the
accumulation is fp32 in every mode; float64 inputs always take float64 products):

- ``"ieee"``: exact fp32 products (IEEE FMA), unit roundoff 2^-24. The default everywhere.
- ``"tf32x3"``: each operand split into a TF32 high and low part, three tensor-core products;
  about fp32 accuracy (2^-21) at tensor-core speed.
- ``"tf32"``: one TF32 product (operands rounded to 10 mantissa bits), 2^-11.
- ``"bf16"``: operands rounded to bf16 (7 mantissa bits), 2^-8.
- ``"auto"``: chosen per call: the fastest mode whose error bound meets the family's accuracy
  target (the empirical denoiser: every weight within 1e-4 relative).

Which family takes which (what each kernel implements):

======================  ==========================================
family                  precisions
======================  ==========================================
Moments                 ieee, tf32x3, tf32
Gaussian denoiser       ieee, tf32, bf16
Empirical denoiser      ieee, tf32, bf16, auto
======================  ==========================================
"""

from __future__ import annotations

#: Unit roundoff of one operand in each product mode ("float64": float64 inputs' products).
UNIT_ROUNDOFF = {"float64": 2.0**-53, "ieee": 2.0**-24, "tf32x3": 2.0**-21, "tf32": 2.0**-11, "bf16": 2.0**-8}

MOMENTS = ("ieee", "tf32x3", "tf32")
GAUSSIAN = ("ieee", "tf32", "bf16")
EMPIRICAL = ("ieee", "tf32", "bf16", "auto")


def check_precision(value, accepted: tuple[str, ...], what: str) -> str:
    """``value`` when it is one of ``accepted``; else the one error of every family:
    ValueError ``precision: expected one of <accepted> for <what>, got <value>``.

    Example:
        >>> check_precision("tf32", GAUSSIAN, "the Gaussian denoiser")
        'tf32'
        >>> check_precision("tf32x3", GAUSSIAN, "the Gaussian denoiser")
        Traceback (most recent call last):
        ...
        ValueError: precision: expected one of ieee, tf32, bf16 for the Gaussian denoiser, got 'tf32x3'
    """
    if not (isinstance(value, str) and value in accepted):
        raise ValueError(f"precision: expected one of {', '.join(accepted)} for {what}, got {value!r}")
    return value
