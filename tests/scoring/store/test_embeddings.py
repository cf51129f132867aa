"""PackedEmbeddings: texts' token embeddings in one buffer, in order, in the requested dtype."""
import numpy as np
import pytest

from scoring.store.batching import split_rows
from scoring.store.embeddings import PackedEmbeddings


def test_pack_keeps_order_lengths_and_rounds_to_dtype():
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((n, 5)) for n in (3, 0, 7, 1)]
    packed = PackedEmbeddings.pack(arrays, 5, np.float16)
    assert packed.data.dtype == np.float16 and packed.lengths.tolist() == [3, 0, 7, 1]
    assert packed.offsets.tolist() == [0, 3, 3, 10, 11] and packed.total_tokens == 11
    for original, rows in zip(arrays, split_rows(packed)):
        np.testing.assert_array_equal(rows, original.astype(np.float16))


def test_pack_of_nothing_and_of_a_wrong_width():
    empty = PackedEmbeddings.pack([], 5)
    assert empty.data.shape == (0, 5) and empty.count == 0
    with pytest.raises(ValueError, match=r"embeddings are \[4\] wide, the buffer 5"):
        PackedEmbeddings.pack([np.zeros((2, 4))], 5)


def test_token_counts_are_the_rows_unless_told_otherwise():
    """A bi-encoder's text is one row but many input tokens: usage counts `tokens` where it is given."""
    rows = PackedEmbeddings.pack([np.zeros((3, 2)), np.zeros((1, 2))], 2)
    assert rows.token_counts.tolist() == [3, 1]
    vectors = PackedEmbeddings(np.zeros((2, 2), np.float32), np.ones(2, np.int32), tokens=np.array([7, 12]))
    assert vectors.token_counts.tolist() == [7, 12] and vectors.nbytes == 16 + 8 + 16
    with pytest.raises(ValueError, match="tokens"):
        PackedEmbeddings(np.zeros((2, 2), np.float32), np.ones(2, np.int32), tokens=np.array([7]))


def test_pack_into_float16_rounds_as_numpy_does():
    """The encoder's float32 rows packed as float16 (torch's conversion) equal numpy's cast bit for bit: ties,
    subnormals and values past float16's range included."""
    rng = np.random.default_rng(3)
    rows = [rng.standard_normal((n, 8)).astype(np.float32) * 10.0 ** rng.integers(-8, 6) for n in (3, 0, 17, 40)]
    rows[0][0, :4] = [65520.0, -1e6, 2.0 ** -25, 1 + 2.0 ** -11]  # to inf, -inf, a subnormal tie, a tie to even
    packed = PackedEmbeddings.pack(rows, 8, np.float16)
    with np.errstate(over="ignore"):
        want = np.concatenate(rows).astype(np.float16)
    assert packed.data.dtype == np.float16 and packed.lengths.tolist() == [3, 0, 17, 40]
    assert np.array_equal(packed.data.view(np.uint16), want.view(np.uint16))
