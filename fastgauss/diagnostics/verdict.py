"""The three-way verdict on a trained diffusion model: memorizes, undertrained or generalizes.

One function, :func:`verdict`, shared by ``fastgauss demo``, ``fastgauss reproduce`` and
``fastgauss analyze``, so that every report reads a model's regime off the same evidence by the
same rules, and prints that evidence beside the label (DESIGN.md section 1, "Verdict").

The evidence and what each number means:

- **memorization ratio**: the fraction of the model's samples whose nearest training image is
  less than a third as far as the second nearest (|x - NN_1| / |x - NN_2| < 1/3): a sample that
  is a copy of one training image.
- **RMSE ratio**: at the noise levels sigma <= ``SIGMA_MAX`` (= 1), the mean RMSE of the network
  to the memorizing denoiser D_M of its training set divided by its mean RMSE to the Gaussian
  denoiser D_G (RMSE(sigma) = mean over noisy inputs x of sqrt(|D_1(x) - D_2(x)|^2 / d)). Below 1
  the network is closer to D_M than to D_G.
- **GL score**: the mean over samples of |x - NN(x)| / |x|, the distance of a sample to its
  nearest training image relative to the sample's norm; shown beside the GL score of as many
  fresh samples of N(mu, Sigma) (the training set's mean and covariance) on the same data,
  its calibrated reference. A model whose samples lie farther from the training set than
  samples of the Gaussian itself has not learned even the Gaussian structure.

The rules, in this order (the first that fires gives the label):

1. memorization ratio >= ``MEMORIZATION_RATIO`` (0.1)                     -> "memorizes"
2. RMSE ratio <= ``RMSE_RATIO_MARGIN`` (0.67: clearly closer to D_M)       -> "memorizes"
3. GL score > GL score of fresh N(mu, Sigma) samples                       -> "undertrained"
4. otherwise                                                                -> "generalizes"

A piece of evidence that was not measured (``None`` or NaN) skips its rule, and the verdict says
so in its ``rule``.

Calibration of the margin (``fastgauss demo`` with its defaults: digits, width 32, 3000 steps,
64 samples; RMSE means over sigma = 0.1, 0.2, 0.5, 1): the memorizing model (N = 64) has RMSE
ratio 0.43 (0.071 to D_M against 0.164 to D_G), the generalizing model (N = 1797) 1.03 (0.130
against 0.126). The margin 0.67 is their geometric mean, sqrt(0.43 * 1.03): a factor of about
1.5 from each. On the same run the GL scores are 0.21 (N = 64) and 0.38 (N = 1797) against
0.58 and 0.53 for fresh N(mu, Sigma) samples. Models trained for only 100 steps
(``fastgauss reproduce --sizes 64,256,1797 --steps 100``) score GL 2.30, 2.27 and 2.23 against
0.58, 0.57 and 0.54, with RMSE ratios 1.21-1.25: undertrained.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

#: Rule 1: at least this fraction of samples copies one training image -> memorizes.
MEMORIZATION_RATIO = 0.1
#: Rule 2: mean RMSE to D_M / mean RMSE to D_G at sigma <= SIGMA_MAX at most this -> memorizes.
RMSE_RATIO_MARGIN = 0.67
#: The noise levels rule 2 looks at: sigma <= SIGMA_MAX.
SIGMA_MAX = 1.0

LABELS = ("memorizes", "undertrained", "generalizes")


@dataclass(frozen=True)
class Verdict:
    """A model's regime and the evidence it was read from.

    label: "memorizes", "undertrained" or "generalizes"; rule: the rule that fired, in words.
    Evidence (None where not measured): memorization_ratio, gl_score, gl_score_gaussian,
    rmse_ratio (mean RMSE to D_M / to D_G at sigma <= sigma_max), rmse_to_empirical_low and
    rmse_to_gaussian_low (those two means), sigmas_low (the levels they average), and the
    thresholds used (memorization_threshold, margin, sigma_max).

    >>> import fastgauss
    >>> v = fastgauss.verdict(memorization_ratio=0.28)
    >>> v.label, v.memorization_ratio, v.gl_score
    ('memorizes', 0.28, None)
    >>> v.to_dict()["label"]
    'memorizes'
    """

    label: str
    rule: str
    memorization_ratio: float | None
    gl_score: float | None
    gl_score_gaussian: float | None
    rmse_ratio: float | None
    rmse_to_empirical_low: float | None
    rmse_to_gaussian_low: float | None
    sigmas_low: tuple
    memorization_threshold: float = MEMORIZATION_RATIO
    margin: float = RMSE_RATIO_MARGIN
    sigma_max: float = SIGMA_MAX

    def to_dict(self) -> dict:
        """Every field, JSON-ready (None where not measured)."""
        return {"label": self.label, "rule": self.rule, "memorization_ratio": self.memorization_ratio,
                "gl_score": self.gl_score, "gl_score_gaussian": self.gl_score_gaussian,
                "rmse_ratio": self.rmse_ratio, "rmse_to_empirical_low": self.rmse_to_empirical_low,
                "rmse_to_gaussian_low": self.rmse_to_gaussian_low, "sigmas_low": list(self.sigmas_low),
                "memorization_threshold": self.memorization_threshold, "margin": self.margin,
                "sigma_max": self.sigma_max}

    def evidence_lines(self) -> list[str]:
        """One line per piece of evidence, each with the threshold it is compared to."""
        def num(v, fmt=".3f"):
            return "not measured" if v is None else format(v, fmt)

        levels = ", ".join(f"{s:g}" for s in self.sigmas_low) or "none"
        return [
            f"memorization ratio {num(self.memorization_ratio)} (fraction of samples copying one training image; "
            f"memorizes at >= {self.memorization_threshold:g})",
            f"RMSE to memorizing / to Gaussian at sigma <= {self.sigma_max:g} (levels {levels}): "
            f"{num(self.rmse_to_empirical_low, '.4f')} / {num(self.rmse_to_gaussian_low, '.4f')} = "
            f"{num(self.rmse_ratio, '.2f')} (memorizes at <= {self.margin:g})",
            f"GL score {num(self.gl_score)} against {num(self.gl_score_gaussian)} for fresh N(mu, Sigma) samples "
            f"(undertrained when above it)",
        ]

    def __str__(self) -> str:
        return f"{self.label}: {self.rule}\n" + "\n".join("  " + line for line in self.evidence_lines())


def _optional_number(value, name: str, *, low: float = 0.0, high: float = math.inf) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise TypeError(f"{name}: expected a number or None, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        return None
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name}: expected a finite value in [{low:g}, {high:g}], got {value!r}")
    return value


def _table(values, name: str) -> dict[float, float]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise TypeError(f"{name}: expected a mapping {{sigma: RMSE}}, got {type(values).__name__}")
    out = {}
    for sigma, rmse in values.items():
        s = _optional_number(sigma, f"{name} (a sigma)")
        v = _optional_number(rmse, f"{name} at sigma={sigma!r}")
        if s is None or v is None:
            raise ValueError(f"{name}: sigma {sigma!r} has RMSE {rmse!r}; expected finite numbers")
        out[s] = v
    return out


def verdict(*, memorization_ratio=None, gl_score=None, gl_score_gaussian=None, rmse_to_empirical=None,
            rmse_to_gaussian=None, memorization_threshold: float = MEMORIZATION_RATIO,
            margin: float = RMSE_RATIO_MARGIN, sigma_max: float = SIGMA_MAX) -> Verdict:
    """Read a model's regime off its evidence (rules in the module docstring).

    memorization_ratio: float in [0, 1], of the model's samples on its training set.
    gl_score, gl_score_gaussian: the GL score of the model's samples and of as many fresh
        N(mu, Sigma) samples, both on the training set.
    rmse_to_empirical, rmse_to_gaussian: {sigma: RMSE} of the network to D_M and to D_G; the
        levels sigma <= sigma_max that appear in both are averaged.
    Any of them may be None (or NaN): its rule is skipped. At least one rule must be decidable.

    Example:
        >>> import fastgauss
        >>> v = fastgauss.verdict(memorization_ratio=0.0, gl_score=0.38, gl_score_gaussian=0.53,
        ...                       rmse_to_empirical={0.5: 0.18, 1.0: 0.18}, rmse_to_gaussian={0.5: 0.17, 1.0: 0.19})
        >>> v.label
        'generalizes'
        >>> fastgauss.verdict(memorization_ratio=0.28).label
        'memorizes'
        >>> fastgauss.verdict(memorization_ratio=0.0, gl_score=0.7, gl_score_gaussian=0.55).label
        'undertrained'
    """
    threshold = _optional_number(memorization_threshold, "memorization_threshold", high=1.0)
    if threshold is None or threshold == 0:
        raise ValueError(f"memorization_threshold: expected a value in (0, 1], got {memorization_threshold!r}")
    margin_v = _optional_number(margin, "margin")
    if margin_v is None or margin_v == 0:
        raise ValueError(f"margin: expected a finite value > 0, got {margin!r}")
    smax = _optional_number(sigma_max, "sigma_max")
    if smax is None or smax == 0:
        raise ValueError(f"sigma_max: expected a finite value > 0, got {sigma_max!r}")
    ratio = _optional_number(memorization_ratio, "memorization_ratio", high=1.0)
    gl = _optional_number(gl_score, "gl_score")
    gl_ref = _optional_number(gl_score_gaussian, "gl_score_gaussian")
    to_emp, to_gauss = _table(rmse_to_empirical, "rmse_to_empirical"), _table(rmse_to_gaussian, "rmse_to_gaussian")

    low = tuple(sorted(s for s in to_emp if s in to_gauss and 0 < s <= smax))
    emp_low = sum(to_emp[s] for s in low) / len(low) if low else None
    gauss_low = sum(to_gauss[s] for s in low) / len(low) if low else None
    if emp_low is None:
        rmse_ratio = None
    elif gauss_low > 0:
        rmse_ratio = emp_low / gauss_low
    else:
        rmse_ratio = None if emp_low == 0 else math.inf  # identical references: no evidence either way

    skipped = []
    if ratio is not None and ratio >= threshold:
        label, rule = "memorizes", (f"memorization ratio {ratio:.3f} >= {threshold:g}: that many samples copy "
                                    f"one training image")
    elif rmse_ratio is not None and rmse_ratio <= margin_v:
        label, rule = "memorizes", (f"at sigma <= {smax:g} the network is clearly closer to the memorizing "
                                    f"denoiser than to the Gaussian (RMSE ratio {rmse_ratio:.2f} <= {margin_v:g})")
    elif gl is not None and gl_ref is not None and gl > gl_ref:
        label, rule = "undertrained", (f"its samples lie farther from the training set than fresh N(mu, Sigma) "
                                       f"samples (GL score {gl:.3f} > {gl_ref:.3f})")
    else:
        if ratio is None:
            skipped.append("memorization ratio")
        if rmse_ratio is None:
            skipped.append(f"RMSE at sigma <= {smax:g}")
        if gl is None or gl_ref is None:
            skipped.append("GL score against the Gaussian's")
        if len(skipped) == 3:
            raise ValueError("verdict: no evidence given; pass memorization_ratio, gl_score with gl_score_gaussian, "
                             f"or rmse_to_empirical with rmse_to_gaussian at some sigma <= {smax:g}")
        label = "generalizes"
        rule = "no rule for memorizing or undertrained fired"
        if skipped:
            rule += f" (not measured: {', '.join(skipped)})"
    return Verdict(label=label, rule=rule, memorization_ratio=ratio, gl_score=gl, gl_score_gaussian=gl_ref,
                   rmse_ratio=rmse_ratio, rmse_to_empirical_low=emp_low, rmse_to_gaussian_low=gauss_low,
                   sigmas_low=low, memorization_threshold=threshold, margin=margin_v, sigma_max=smax)
