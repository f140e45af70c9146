// Host-side regeneration of the frame and rotation tables from their recipes.
//
// Plain C++17 (no CUDA, no TensorRT, no PyTorch). The algorithms are ports of
// fq_export/frames.py (spectral tetris with integer bookkeeping, modulation tables,
// realified DFT) and fq_export/rotations.py (splitmix64 signs, orthonormal DCT-II of the
// odd factor): the same recipe gives the same tables, as tests/test_plugins_recipe.py checks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fq {

// Largest complex block width k the CUDA frame kernels accept (2k real columns <= 128).
constexpr int kMaxFrameBlock = 64;

// Tables of the real (k, rho, d) tight fusion frame (see fq_export/frames.py).
struct FrameTables {
    int k = 0, rho_c = 0, d_c = 0;      // complex block width, rho/2, d/2
    std::vector<int32_t> gather_index;  // [rho_c * k]: bin (i, t) <- complex coordinate
    std::vector<double> gather_weight;  // [rho_c * k]
    std::vector<int32_t> synth_bin;     // [2 * d_c]: v_c[j] gathers bins synth_bin[s][j]
    std::vector<double> synth_weight;   // [2 * d_c]
    std::vector<double> dft;            // [2k * 2k] realified unitary DFT, row-major
    int d() const { return 2 * d_c; }
    int num_vectors() const { return 2 * rho_c * k; }
};

// Tables of the randomized Hadamard rotation R = (H_power kron C_odd) diag(signs).
struct RotationTables {
    int dim = 0, power = 0, odd = 0;
    std::vector<double> signs;  // [dim], +-1
    std::vector<double> dct;    // [odd * odd] orthonormal DCT-II, row-major
};

bool tff_exists(int k, int rho, int d);

// Throws std::invalid_argument naming the triple when no such frame exists.
FrameTables make_frame_tables(int k, int rho, int d);

// Throws std::invalid_argument for a non-positive dimension.
RotationTables make_rotation_tables(int dim, uint64_t seed);

// The first `count` outputs of splitmix64 started at `seed`.
std::vector<uint64_t> splitmix64(uint64_t seed, int count);

}  // namespace fq
