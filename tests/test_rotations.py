"""Randomized Hadamard rotations against dense float64 matrices."""
import numpy as np
import pytest
import torch

from fq_export.rotations import HadamardRotation, RotationSpec, hadamard_matrix, random_signs, splitmix64


def test_splitmix64_reference_values():
    # Published splitmix64 outputs for seed 0 (Vigna's reference implementation).
    assert [int(v) for v in splitmix64(0, 3)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_signs_are_seeded_and_independent_of_global_rng():
    torch.manual_seed(1)
    np.random.seed(1)
    a = random_signs(42, 100)
    torch.manual_seed(2)
    np.random.seed(2)
    assert np.array_equal(a, random_signs(42, 100))
    assert not np.array_equal(a, random_signs(43, 100))
    assert set(np.unique(a)) == {-1.0, 1.0}


def test_hadamard_matrix_is_sylvester():
    h = hadamard_matrix(8) * np.sqrt(8)
    h2 = np.array([[1, 1], [1, -1]])
    np.testing.assert_array_equal(h, np.kron(h2, np.kron(h2, h2)))


@pytest.mark.parametrize("d", [2, 64, 384, 576, 768, 1536, 11008])
def test_rotation_is_orthogonal_and_fast_path_matches_dense(d):
    rot = HadamardRotation(RotationSpec(d, 7))
    r = rot.dense()
    np.testing.assert_allclose(r @ r.T, np.eye(d), atol=1e-12)
    x = torch.randn(3, 5, d, dtype=torch.float64)
    dense = torch.from_numpy(r)
    torch.testing.assert_close(rot.forward(x), x @ dense.T, atol=1e-12, rtol=0)
    torch.testing.assert_close(rot.transpose(x), x @ dense, atol=1e-12, rtol=0)
    torch.testing.assert_close(rot.transpose(rot.forward(x)), x, atol=1e-12, rtol=0)


def test_rotation_float32_error_is_dtype_level():
    rot = HadamardRotation(RotationSpec(768, 3))
    x = torch.randn(16, 768, dtype=torch.float64)
    exact = rot.forward(x)
    approx = rot.forward(x.float()).double()
    # float32 rounding over log2(256) + 3 stages: a few eps relative to the vector norm.
    assert (approx - exact).norm() / exact.norm() < 20 * torch.finfo(torch.float32).eps


def test_wrong_shape_is_clear():
    with pytest.raises(ValueError, match="last axis"):
        HadamardRotation(RotationSpec(64, 0)).forward(torch.zeros(2, 63))
