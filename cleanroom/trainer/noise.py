"""Noise for released counts: an exact discrete Gaussian sampler on the OS CSPRNG.

Counts are integers, so they get integer noise: the discrete Gaussian N_Z(0, σ²) of Canonne,
Kamath and Steinke ("The Discrete Gaussian for Differential Privacy", NeurIPS 2020), sampled
exactly with rational arithmetic (their Algorithms 1-3, written from the paper) from
`random.SystemRandom` (the OS CSPRNG). That avoids both floating-point attacks on continuous samplers and a
predictable PRNG. Its privacy is the continuous one's: integer queries of L2 sensitivity Δ get
Δ²/(2σ²)-zCDP. OpenDP's sampler can replace `count_noise` once OpenDP is installed here; keep the
signature.
"""

from __future__ import annotations

import random
from fractions import Fraction

import numpy as np


def secure_rng() -> random.Random:
    """The service's noise source: SystemRandom reads the OS CSPRNG for every draw."""
    return random.SystemRandom()


def _bernoulli(p: Fraction, rng: random.Random) -> bool:
    return rng.randrange(p.denominator) < p.numerator


def _bernoulli_exp_small(gamma: Fraction, rng: random.Random) -> bool:
    """Bernoulli(exp(-γ)) for 0 <= γ <= 1 (CKS20 Algorithm 1, first case)."""
    k = 1
    while _bernoulli(gamma / k, rng):
        k += 1
    return k % 2 == 1


def _bernoulli_exp(gamma: Fraction, rng: random.Random) -> bool:
    """Bernoulli(exp(-γ)) for any rational γ >= 0."""
    whole = int(gamma)
    for _ in range(whole):
        if not _bernoulli_exp_small(Fraction(1), rng):
            return False
    return _bernoulli_exp_small(gamma - whole, rng)


def _discrete_laplace(t: int, rng: random.Random) -> int:
    """P(x) ∝ exp(-|x|/t) over the integers (CKS20 Algorithm 2)."""
    while True:
        u = rng.randrange(t)
        if not _bernoulli_exp(Fraction(u, t), rng):
            continue
        v = 0
        while _bernoulli_exp(Fraction(1), rng):
            v += 1
        x = u + t * v
        negative = rng.randrange(2) == 1
        if negative and x == 0:
            continue
        return -x if negative else x


def discrete_gaussian(sigma: float, rng: random.Random) -> int:
    """One exact draw of N_Z(0, σ²) (CKS20 Algorithm 3); σ is taken as the exact rational of the float."""
    sigma2 = Fraction(sigma) ** 2
    t = int(Fraction(sigma)) + 1
    while True:
        y = _discrete_laplace(t, rng)
        gamma = (abs(y) - sigma2 / t) ** 2 / (2 * sigma2)
        if _bernoulli_exp(gamma, rng):
            return y


def count_noise(shape: tuple[int, ...], *, sigma: float, rng: random.Random | None = None) -> np.ndarray:
    """Integer noise for a vector of counts; the one place to swap in OpenDP's sampler.
    `rng` defaults to the OS CSPRNG; a seeded random.Random is for reproducible tests only."""
    rng = rng or secure_rng()
    size = int(np.prod(shape)) if shape else 1
    return np.array([discrete_gaussian(sigma, rng) for _ in range(size)], dtype=np.int64).reshape(shape)
