"""The packed layout, pinned bit by bit against a plain Python reading of its definition."""
import numpy as np
import pytest
import torch

from fq_export import packing


def reference_unpack(words: np.ndarray, bits: int, cols: int) -> np.ndarray:
    """Read the layout as documented: group g of a row = bits words, little-endian bitstream."""
    rows = words.shape[0]
    out = np.zeros((rows, cols), dtype=np.int64)
    for r in range(rows):
        for c in range(cols):
            g, j = divmod(c, packing.GROUP)
            stream = 0
            for w in range(bits):
                stream |= (int(words[r, g * bits + w]) & 0xFFFFFFFF) << (32 * w)
            out[r, c] = (stream >> (bits * j)) & (2**bits - 1)
    return out


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("cols", [1, 31, 32, 33, 100])
def test_pack_matches_documented_layout(bits, cols):
    gen = torch.Generator().manual_seed(bits * 100 + cols)
    codes = torch.randint(0, 2**bits, (5, cols), generator=gen)
    packed = packing.pack_codes(codes, bits)
    assert packed.dtype == torch.int32 and packed.shape == (5, packing.words_per_row(cols, bits))
    np.testing.assert_array_equal(reference_unpack(packed.numpy(), bits, cols), codes.numpy())
    torch.testing.assert_close(packing.unpack_codes(packed, bits, cols), codes)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_code_location_formula(bits):
    codes = torch.zeros(1, 64, dtype=torch.int64)
    for col in range(64):
        codes.zero_()
        codes[0, col] = 1
        words = packing.pack_codes(codes, bits).numpy().view(np.uint32)[0]
        word, bit = packing.code_location(col, bits)
        assert words[word] == (1 << bit)


def test_bad_input_is_clear():
    with pytest.raises(ValueError, match="not supported"):
        packing.pack_codes(torch.zeros(2, 2, dtype=torch.int64), 5)
    with pytest.raises(ValueError, match="must lie in"):
        packing.pack_codes(torch.full((2, 2), 4), 2)
    with pytest.raises(ValueError, match="packed width"):
        packing.unpack_codes(torch.zeros(2, 3, dtype=torch.int32), 2, 64)
