"""Hostile primitive values for the fuzz: strings (odd unicode, NUL, huge, names the stack knows),
numbers at and past their limits (NaN, infinities, extremes), bytes, and JSON values.

Known names (a dataset, a model, request ids) are mixed in so that a share of generated input
gets past the first lookup and reaches the code behind it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)

# Characters that break naive handling: NUL (PostgreSQL text refuses it), controls, BOM,
# zero-width and bidi overrides, combining marks, astral-plane emoji, a replacement character.
ODD_CHARS = "\x00\x01\x1b\x7f\u0085\u00a0\u0301\u200b\u200d\u202e\u2028\ufeff\ufffd\U0001f600\U0010ffff"
ODD_STRINGS = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u202egnp.exe",
    "../../../../etc/passwd",
    "/etc/passwd",
    "file:///etc/passwd",
    "sha256:" + "0" * 64,
    "sha256:../../x",
    "${jndi:ldap://x}",
    "'; DROP TABLE datasets; --",
    "%s%s%n",
    "\\",
    "NaN",
    "-Infinity",
    "1e999",
    "__split",
    "__label__",
    "production",
    "latest",
    "*",
    "null",
)
FLOAT_EDGES = (
    math.nan,
    -math.nan,
    math.inf,
    -math.inf,
    0.0,
    -0.0,
    1e308,
    -1e308,
    5e-324,
    2.0**53 + 1,
    1e-300,
    0.5,
    1.0,
    -1.0,
)


def _edges(lo: int, hi: int) -> list[int]:
    return sorted({v for v in (lo, hi, lo + 1, hi - 1, 0, 1, -1, 2, 10**6, 10**9, 2**31, 2**32) if lo <= v <= hi})


def ints(lo: int, hi: int, known: Sequence[int] = ()) -> st.SearchStrategy[int]:
    """Any int in [lo, hi], with the range's edges, small values and `known` ones (versions, ids) boosted."""
    pool = _edges(lo, hi) + [k for k in known if lo <= k <= hi]
    return st.one_of(st.sampled_from(pool), st.integers(-3, 20).filter(lambda v: lo <= v <= hi), st.integers(lo, hi))


def floats(width: int = 64) -> st.SearchStrategy[float]:
    edges = [f for f in FLOAT_EDGES if width == 64 or math.isnan(f) or (abs(f) < 3e38 and (f == 0 or abs(f) > 1e-38))]
    return st.one_of(st.sampled_from(edges), st.floats(width=width), st.floats(-10, 10, width=width))  # type: ignore[arg-type]


def huge_text(max_chars: int) -> st.SearchStrategy[str]:
    """A long string built by repetition (cheap to generate, however long)."""
    return st.builds(
        lambda unit, n: unit * max(1, n // len(unit)), st.text(min_size=1, max_size=3), st.integers(1, max_chars)
    )


def texts(known: Sequence[str], *, huge_chars: int, surrogates: bool = False) -> st.SearchStrategy[str]:
    """Strings: known names (and near misses of them), odd and ordinary unicode, and now and then a
    huge one. `surrogates` adds lone surrogates, which only JSON (as \\ud800 escapes) can carry."""
    known = tuple(known) or ("x",)
    near = st.builds(
        lambda k, odd: k + odd, st.sampled_from(known), st.sampled_from(["\x00", " ", "\u200b", "X", "/.."])
    )
    branches: list[st.SearchStrategy[str]] = [
        st.sampled_from(known),
        st.sampled_from(known),
        near,
        st.sampled_from(ODD_STRINGS),
        st.text(max_size=24),
        st.text(alphabet=st.sampled_from(ODD_CHARS) | st.characters(codec="utf-8"), max_size=16),
        huge_text(huge_chars),
    ]
    if surrogates:
        branches.append(
            st.text(
                alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) | st.characters(),
                min_size=1,
                max_size=6,
            )
        )
    return st.one_of(branches)


def binaries(max_size: int = 256) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=max_size),
        st.sampled_from([b"", b"\x00", b"\xff\xfe\xfd", b"PAR1", b"ARROW1\x00\x00", b"\x1f\x8b\x08", b"PK\x03\x04"]),
        st.builds(lambda unit, n: unit * n, st.binary(min_size=1, max_size=4), st.integers(1, 64 * 1024)),
    )


def json_values(
    strings: st.SearchStrategy[str], *, max_leaves: int = 12, big_ints: bool = True
) -> st.SearchStrategy[Any]:
    """JSON-shaped values: null, bools, numbers (NaN and infinities included; ints past int64 when
    `big_ints`), strings, and nested lists and objects."""
    numbers: st.SearchStrategy[Any] = st.one_of(
        floats(), ints(*INT64), st.integers(-(2**70), 2**70) if big_ints else st.integers(-(2**53), 2**53)
    )
    leaves = st.one_of(st.none(), st.booleans(), numbers, strings)
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(strings, inner, max_size=4),
        max_leaves=max_leaves,
    )
