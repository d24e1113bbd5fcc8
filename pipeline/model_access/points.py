"""Named read points of a decoder forward (see :mod:`.runner` for what each one is).

A point is ``kind[l]`` with ``l`` the 0-based decoder block: ``resid_pre[l]`` (h[l]),
``resid_post[l]`` (h[l+1]), ``attn_in[l]``, ``attn_out[l]``, ``ffn_in[l]``,
``ffn_out[l]``, ``q[l]``, ``k[l]``. ``Point.parse("resid_post[3]")`` and
``Point("resid_post", 3)`` are the same point; ``str(point)`` gives the name back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Every kind of read point, in the order the forward passes them within a block.
KINDS = ("resid_pre", "attn_in", "q", "k", "attn_out", "ffn_in", "ffn_out", "resid_post")
_NAME = re.compile(r"^([a-z_]+)\[(\d+)\]$")


@dataclass(frozen=True, order=True)
class Point:
    """A read point: ``kind`` (one of :data:`KINDS`) at 0-based block ``layer``."""

    kind: str
    layer: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown read point kind {self.kind!r}; known: {list(KINDS)}")
        if self.layer < 0:
            raise ValueError(f"read point {self.kind}[{self.layer}]: block index must be >= 0")

    @classmethod
    def parse(cls, name: str | Point) -> Point:
        """``"kind[l]"`` (or a :class:`Point`) -> :class:`Point`; ``ValueError`` otherwise."""
        if isinstance(name, Point):
            return name
        m = _NAME.match(str(name).strip())
        if not m:
            raise ValueError(f"bad read point {name!r}: expected kind[l], e.g. 'resid_post[3]'")
        return cls(m.group(1), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.kind}[{self.layer}]"


def resid_pre(layer: int) -> Point:
    """h[layer]: the input of block ``layer`` (0-based); ``resid_pre(0)`` = embeddings."""
    return Point("resid_pre", layer)


def resid_post(layer: int) -> Point:
    """h[layer+1]: the raw output of block ``layer`` (0-based), before any final norm."""
    return Point("resid_post", layer)
