"""Token embeddings of many texts in one contiguous buffer: what the encoder hands to the scorer.

One numpy buffer + lengths crosses the process boundary once (zero-copy through Ray's object store),
instead of one tensor per document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class PackedEmbeddings:
    data: np.ndarray  # [T, d]: every text's token embeddings, one after another
    lengths: np.ndarray  # [B] int32: rows per text (its tokens' embeddings), sum == T
    # [B]: the input tokens of each text where a row is not a token (a bi-encoder's one vector a text); None: lengths
    tokens: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.data.ndim != 2 or self.lengths.ndim != 1:
            raise ValueError("data must be [T, d] and lengths [B]")
        if int(self.lengths.sum()) != self.data.shape[0]:
            raise ValueError(f"lengths sum to {int(self.lengths.sum())}, data has {self.data.shape[0]} rows")
        if self.tokens is not None and self.tokens.shape != self.lengths.shape:
            raise ValueError(f"tokens {self.tokens.shape} and lengths {self.lengths.shape} differ")

    @property
    def token_counts(self) -> np.ndarray:
        """[B] input tokens of each text: what usage counts."""
        return self.lengths if self.tokens is None else self.tokens

    @classmethod
    def pack(cls, arrays: Sequence[np.ndarray], dim: int, dtype: np.dtype | str = np.float32,
             tokens: np.ndarray | None = None) -> "PackedEmbeddings":
        """One buffer of `dtype` holding `arrays` ([L_i, dim] each) one after another (`tokens`: as the field). One
        C-level concatenation: 1,000 documents of 85-512 tokens at d 128 pack in 11-17 ms on 2 cores, against 21
        ms for a Python loop over them; into float16, 22 ms."""
        lengths = np.fromiter((a.shape[0] for a in arrays), dtype=np.int32, count=len(arrays))
        data = np.empty((int(lengths.sum()), dim), dtype=dtype)
        if any(a.ndim != 2 or a.shape[1] != dim for a in arrays):
            widths = sorted({a.shape[-1] for a in arrays})
            raise ValueError(f"embeddings are {widths} wide, the buffer {dim}: pack with the model's output width")
        if len(arrays) and all(a.dtype == data.dtype for a in arrays):
            np.concatenate(arrays, axis=0, out=data)
        elif len(arrays):  # torch converts with SIMD (float32 rows into float16: 22 ms against numpy's 126, 2 cores)
            torch.cat([torch.from_numpy(np.asarray(a)) for a in arrays], out=torch.from_numpy(data))
        return cls(data=data, lengths=lengths, tokens=tokens)

    @property
    def count(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def total_tokens(self) -> int:
        return int(self.data.shape[0])

    @property
    def dim(self) -> int:
        return int(self.data.shape[1])

    @property
    def offsets(self) -> np.ndarray:
        """[B+1] start offsets (`cu_seqlens`)."""
        out = np.zeros(self.count + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=out[1:])
        return out

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + self.lengths.nbytes + (0 if self.tokens is None else self.tokens.nbytes))
