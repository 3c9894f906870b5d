"""The order seeded draws take papers in: a hash of (seed, salt, id), never the rows' order, so the same papers
listed in another order give the same split, samples and triplets. Its own module, so that a change to the samplers
does not rerun split (which keys every paper on it)."""

from __future__ import annotations

import hashlib

import polars as pl


def stable_order(ids: pl.Series, seed: int, salt: str = "") -> pl.Series:
    """A random-looking key per paper that depends only on (seed, salt, id), stable across versions.
    Draws of one seed take different salts, so that no draw follows another's order."""
    prefix = f"{seed}:{salt}:" if salt else f"{seed}:"  # no salt: the split's key, as it has always been
    digest = (hashlib.blake2b(f"{prefix}{i}".encode(), digest_size=8).digest() for i in ids)
    return pl.Series("order", [int.from_bytes(d, "big") for d in digest], dtype=pl.UInt64)
