"""Noise sources: continuous Gaussian noise for DP-SGD and exact discrete Gaussian noise for counts,
both drawn from the OS CSPRNG by default.

Gradients. `SecureGaussian` turns CSPRNG bytes (AES-256-CTR keyed from os.urandom) into normals
(Box-Muller on 53-bit uniforms, float32). We do not use a seeded torch.Generator: torch's CPU generator is
mt19937 and keeps only the low 32 bits of its seed (manual_seed(s) and manual_seed(s + 2**32)
give the same stream), so a job's whole noise sequence would be one of 2**32, which an attacker
who can replay the rest of the computation could enumerate. A 256-bit key and a cryptographic
keystream leave nothing to enumerate or to recover from outputs. What remains (as in every DP-SGD implementation) is that
continuous noise in floating point is not exactly Gaussian (Mironov 2012-style attacks target
such samplers); 53-bit uniforms keep the tails out to about 8.6σ.
`TorchGaussian` reproduces Opacus's DPOptimizer draws from a given generator, for tests.

Counts.
Counts are integers, so they get integer noise: the discrete Gaussian N_Z(0, σ²) of Canonne,
Kamath and Steinke ("The Discrete Gaussian for Differential Privacy", NeurIPS 2020), sampled
exactly with rational arithmetic (their Algorithms 1-3, written from the paper) from
`random.SystemRandom` (the OS CSPRNG). That avoids both floating-point attacks on continuous samplers and a
predictable PRNG. Its privacy is the continuous one's: integer queries of L2 sensitivity Δ get
Δ²/(2σ²)-zCDP. OpenDP's sampler can replace `count_noise` once OpenDP is installed here; keep the
signature.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import torch
from numpy.typing import NDArray


class SecureGaussian:
    """N(0, std²) float32 tensors from a CSPRNG: AES-256 in counter mode (the keystream construction
    of NIST SP 800-90A's CTR_DRBG) under a fresh 256-bit key from the OS per instance (per job).
    Samples are made in blocks of at least BLOCK and handed out in order, never twice: per-call
    numpy overhead would otherwise cost a DP step of a small model ~30% more."""

    name = "aes256-ctr-csprng-box-muller"
    BLOCK = 1 << 18

    def __init__(self, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        from Crypto.Cipher import AES

        self._stream = AES.new(random_bytes(32), AES.MODE_CTR, nonce=b"")
        self._buffer, self._used = np.empty(0, dtype=np.float32), 0
        self._std: float | None = None

    def _block(self, n: int, std: float) -> np.ndarray:
        """2·⌈n/2⌉ samples by Box-Muller on 53-bit uniforms from the keystream, in float32 (the
        output precision; a uniform as small as 2**-54 stays exact, so tails reach ~8.6σ)."""
        pairs = (n + 1) // 2
        words = np.frombuffer(self._stream.encrypt(bytes(16 * pairs)), dtype=np.uint64) >> np.uint64(11)
        uniform = (words.astype(np.float32) + np.float32(0.5)) * np.float32(2.0 ** -53)  # (0, 1]
        radius = np.sqrt(np.log(uniform[:pairs]) * np.float32(-2.0 * std * std))
        angle = uniform[pairs:] * np.float32(2.0 * np.pi)
        return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])

    def normal(self, shape: tuple[int, ...], std: float) -> torch.Tensor:
        return self.normals([shape], std)[0]

    def normals(self, shapes: list[tuple[int, ...]], std: float) -> list[torch.Tensor]:
        """Fresh samples for every tensor of a step, in the given order."""
        sizes = [math.prod(s) for s in shapes]
        n = sum(sizes)
        if std != self._std or self._used + n > len(self._buffer):
            self._buffer, self._std, self._used = self._block(max(n, self.BLOCK), std), std, 0
        start, self._used = self._used, self._used + n
        ends = np.cumsum(sizes).tolist()
        return [torch.from_numpy(self._buffer[start + end - size:start + end].reshape(shape))
                for end, size, shape in zip(ends, sizes, shapes)]


class TorchGaussian:
    """torch.normal from a given generator, drawn exactly as Opacus's DPOptimizer draws (tests)."""

    name = "torch-generator"

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def normal(self, shape: tuple[int, ...], std: float) -> torch.Tensor:
        return torch.normal(0.0, std, size=shape, generator=self.generator)

    def normals(self, shapes: list[tuple[int, ...]], std: float) -> list[torch.Tensor]:
        return [self.normal(shape, std) for shape in shapes]


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


def count_noise(shape: tuple[int, ...], *, sigma: float, rng: random.Random | np.random.Generator | None = None) -> NDArray[np.int64]:
    """Integer noise for a vector of counts; the one place to swap in OpenDP's sampler.
    `rng` defaults to the OS CSPRNG; a seeded random.Random is for reproducible tests only. A numpy
    Generator draws a rounded normal instead (fast, not exact, no privacy claim): only for the
    coverage test and bench, which repeat an evaluation thousands of times."""
    if isinstance(rng, np.random.Generator):
        return np.rint(rng.normal(0.0, sigma, size=shape)).astype(np.int64)
    source = rng or secure_rng()
    size = int(np.prod(shape)) if shape else 1
    return np.array([discrete_gaussian(sigma, source) for _ in range(size)], dtype=np.int64).reshape(shape)
