import pytest
import torch
from hypothesis import given, settings, strategies as st

from ternary_hf.packing import pack_codes, packed_rows, unpack_codes


@settings(max_examples=60, deadline=None)
@given(out_features=st.integers(1, 37), in_features=st.integers(1, 19), seed=st.integers(0, 2**16))
def test_pack_unpack_round_trip(out_features, in_features, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-1, 2, (out_features, in_features), generator=g, dtype=torch.int8)
    original = codes.clone()
    packed = pack_codes(codes)
    assert packed.dtype == torch.uint8
    assert packed.shape == (packed_rows(out_features), in_features) == (-(-out_features // 4), in_features)
    assert torch.equal(codes, original), "pack_codes must not modify its input"
    assert torch.equal(unpack_codes(packed, out_features), codes)


def test_layout_is_block_order():
    # byte [r, j] holds rows r, R+r, 2R+r, 3R+r in bits 0-1, 2-3, 4-5, 6-7 (stored as code + 1)
    codes = torch.tensor([[-1], [0], [1], [1], [0], [-1], [1], [0]], dtype=torch.int8)  # R = 2
    packed = pack_codes(codes)
    expected_row0 = (0 << 0) | (2 << 2) | (1 << 4) | (2 << 6)  # rows 0, 2, 4, 6 -> codes -1, 1, 0, 1
    expected_row1 = (1 << 0) | (2 << 2) | (0 << 4) | (1 << 6)  # rows 1, 3, 5, 7 -> codes 0, 1, -1, 0
    assert packed[:, 0].tolist() == [expected_row0, expected_row1]


def test_padding_rows_are_zero_codes():
    codes = torch.ones(5, 3, dtype=torch.int8)
    packed = pack_codes(codes)
    full = unpack_codes(packed, 8)
    assert torch.equal(full[5:], torch.zeros(3, 3, dtype=torch.int8))


def test_pack_rejects_out_of_range_codes():
    with pytest.raises(ValueError, match="-1, 0, \\+1"):
        pack_codes(torch.tensor([[2, 0]], dtype=torch.int8))


def test_unpack_rejects_wrong_row_count():
    packed = pack_codes(torch.zeros(8, 2, dtype=torch.int8))
    with pytest.raises(ValueError, match="cannot hold 9 output rows"):
        unpack_codes(packed, 9)
