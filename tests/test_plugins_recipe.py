"""The C++ recipe of plugins_trt regenerates fq_export's frame and rotation tables exactly.

Builds plugins_trt/csrc/recipe.cpp alone with the host C++ compiler (no CUDA, no TensorRT) and
compares its tables with fq_export.frames / fq_export.rotations through ctypes.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fq_export.frames import choose_frame, get_frame, tff_exists
from fq_export.rotations import dct_matrix, random_signs, split_dimension

CSRC = Path(__file__).resolve().parents[1] / "plugins_trt" / "csrc"
CXX = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    if CXX is None:
        pytest.skip("no host C++ compiler")
    lib = tmp_path_factory.mktemp("recipe") / "librecipe.so"
    subprocess.run([CXX, "-std=c++17", "-O2", "-shared", "-fPIC", str(CSRC / "recipe.cpp"), "-o", str(lib)],
                   check=True)
    handle = ctypes.CDLL(str(lib))
    handle.fq_rotation_tables.argtypes = [ctypes.c_int, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_void_p]
    handle.fq_frame_tables.argtypes = [ctypes.c_int] * 3 + [ctypes.c_void_p] * 5
    return handle


def _ptr(array: np.ndarray):
    return array.ctypes.data_as(ctypes.c_void_p)


@pytest.mark.parametrize("d", [384, 768, 1536, 3072, 4096, 11008, 64, 130])
def test_frame_tables_match(recipe, d):
    spec = choose_frame(d, 1.1)
    frame = get_frame(spec.k, spec.rho, spec.d)
    n_bins, k = frame.rho_c * frame.k, frame.k
    gi, gw = np.zeros(n_bins, np.int32), np.zeros(n_bins)
    sb, sw = np.zeros(2 * frame.d_c, np.int32), np.zeros(2 * frame.d_c)
    dft = np.zeros(4 * k * k)
    assert recipe.fq_frame_tables(spec.k, spec.rho, spec.d, _ptr(gi), _ptr(gw), _ptr(sb), _ptr(sw), _ptr(dft)) == 0
    np.testing.assert_array_equal(gi, frame.gather_index)
    np.testing.assert_array_equal(sb.reshape(2, -1), frame.synth_bin)
    # sqrt is correctly rounded in both languages: the tetris values are bit-identical.
    np.testing.assert_array_equal(gw, frame.gather_weight)
    np.testing.assert_array_equal(sw.reshape(2, -1), frame.synth_weight)
    # cos/sin may differ by an ulp between libm and numpy.
    np.testing.assert_allclose(dft.reshape(2 * k, 2 * k), frame.dft, rtol=0, atol=4e-16)


def test_frame_existence_matches(recipe):
    for k, rho, d in [(30, 150, 4096), (2, 2, 4), (3, 4, 10), (8, 6, 40), (5, 2, 12), (30, 14, 385)]:
        ok = recipe.fq_frame_tables(k, rho, d, None, None, None, None, None) == 0
        assert ok == tff_exists(k, rho, d), (k, rho, d)


@pytest.mark.parametrize("dim,seed", [(4096, 0), (768, 12345), (11008, 2**31 - 1), (384, 7), (1, 3), (6, 99)])
def test_rotation_tables_match(recipe, dim, seed):
    power, odd = split_dimension(dim)
    signs, dct = np.zeros(dim), np.zeros(odd * odd)
    assert recipe.fq_rotation_tables(dim, seed, _ptr(signs), _ptr(dct)) == 0
    np.testing.assert_array_equal(signs, random_signs(seed, dim))
    np.testing.assert_allclose(dct.reshape(odd, odd), dct_matrix(odd), rtol=0, atol=4e-16)
