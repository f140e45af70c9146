// Ports of fq_export/frames.py and fq_export/rotations.py; see recipe.h.
#include "recipe.h"

#include <cmath>
#include <stdexcept>
#include <utility>

namespace fq {
namespace {

constexpr double kPi = 3.14159265358979323846;

struct Entry {
    int row;
    double value;
};

// Spectral tetris F (rows x cols): per column, its (row, value) entries (one or two).
// Row weights are counted in units of 1/rows, exactly as in frames.spectral_tetris.
std::vector<std::vector<Entry>> spectral_tetris(int rows, int cols) {
    const long long lam = cols, one = rows;
    std::vector<std::vector<Entry>> columns;
    columns.reserve(cols);
    int row = 0;
    long long left = lam;
    while (static_cast<int>(columns.size()) < cols) {
        if (left >= one) {
            columns.push_back({{row, 1.0}});
            left -= one;
            if (left == 0) {
                row += 1;
                left = lam;
            }
        } else {
            const double a = std::sqrt(static_cast<double>(left) / (2.0 * static_cast<double>(one)));
            const double b = std::sqrt(1.0 - static_cast<double>(left) / (2.0 * static_cast<double>(one)));
            columns.push_back({{row, a}, {row + 1, b}});
            columns.push_back({{row, a}, {row + 1, -b}});
            left = lam - (2 * one - left);
            row += 1;
        }
    }
    return columns;
}

// Column run [start, stop) of each row of spectral tetris; false when cols < 2 rows.
bool runs(int rows, int cols, std::vector<std::pair<int, int>>* out) {
    if (cols < 2 * rows) return false;
    const long long lam = cols, one = rows;
    std::vector<int> starts(rows, -1), stops(rows, 0);
    int row = 0, col = 0;
    long long left = lam;
    while (col < cols) {
        if (left >= one) {
            const long long count = left / one;
            if (starts[row] < 0) starts[row] = col;
            stops[row] = col + static_cast<int>(count);
            left -= count * one;
            col += static_cast<int>(count);
            if (left == 0) {
                row += 1;
                left = lam;
            }
        } else {
            if (starts[row] < 0) starts[row] = col;
            stops[row] = col + 2;
            starts[row + 1] = col;
            stops[row + 1] = col + 2;
            left = lam - (2 * one - left);
            row += 1;
            col += 2;
        }
    }
    out->clear();
    for (int i = 0; i < rows; ++i) out->emplace_back(starts[i], stops[i]);
    return true;
}

std::vector<double> realified_dft(int k) {
    const int n = 2 * k;
    std::vector<double> m(static_cast<size_t>(n) * n, 0.0);
    const double norm = std::sqrt(static_cast<double>(k));
    for (int l = 0; l < k; ++l) {
        for (int t = 0; t < k; ++t) {
            const long long lt = (static_cast<long long>(l) * t) % k;
            const double angle = -2.0 * kPi * static_cast<double>(lt) / k;
            const double re = std::cos(angle) / norm, im = std::sin(angle) / norm;
            m[(2 * l) * n + 2 * t] = re;
            m[(2 * l) * n + 2 * t + 1] = -im;
            m[(2 * l + 1) * n + 2 * t] = im;
            m[(2 * l + 1) * n + 2 * t + 1] = re;
        }
    }
    return m;
}

}  // namespace

bool tff_exists(int k, int rho, int d) {
    if (k < 1 || rho < 2 || d < 2 || rho % 2 || d % 2) return false;
    const int rho_c = rho / 2, d_c = d / 2;
    if (static_cast<long long>(k) * rho_c < d_c) return false;
    std::vector<std::pair<int, int>> r;
    if (!runs(rho_c, d_c, &r)) return false;
    for (const auto& run : r) {
        if (run.second - run.first > k) return false;
    }
    return true;
}

FrameTables make_frame_tables(int k, int rho, int d) {
    if (!tff_exists(k, rho, d)) {
        throw std::invalid_argument("no tight fusion frame exists for (k, rho, d) = (" + std::to_string(k) + ", " +
                                    std::to_string(rho) + ", " + std::to_string(d) + ")");
    }
    FrameTables t;
    t.k = k;
    t.rho_c = rho / 2;
    t.d_c = d / 2;
    t.gather_index.assign(static_cast<size_t>(t.rho_c) * k, 0);
    t.gather_weight.assign(static_cast<size_t>(t.rho_c) * k, 0.0);
    t.synth_bin.assign(2 * static_cast<size_t>(t.d_c), 0);
    t.synth_weight.assign(2 * static_cast<size_t>(t.d_c), 0.0);
    const auto columns = spectral_tetris(t.rho_c, t.d_c);
    for (int j = 0; j < t.d_c; ++j) {
        for (size_t s = 0; s < columns[j].size(); ++s) {
            const int b = columns[j][s].row * k + j % k;
            t.gather_index[b] = j;
            t.gather_weight[b] = columns[j][s].value;
            t.synth_bin[s * t.d_c + j] = b;
            t.synth_weight[s * t.d_c + j] = columns[j][s].value;
        }
    }
    t.dft = realified_dft(k);
    return t;
}

std::vector<uint64_t> splitmix64(uint64_t seed, int count) {
    std::vector<uint64_t> out(count);
    const uint64_t golden = 0x9E3779B97F4A7C15ULL;
    for (int i = 0; i < count; ++i) {
        uint64_t z = static_cast<uint64_t>(i + 1) * golden + seed;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        out[i] = z ^ (z >> 31);
    }
    return out;
}

RotationTables make_rotation_tables(int dim, uint64_t seed) {
    if (dim < 1) throw std::invalid_argument("rotation dimension must be positive, got " + std::to_string(dim));
    RotationTables r;
    r.dim = dim;
    r.power = dim & -dim;
    r.odd = dim / r.power;
    const auto stream = splitmix64(seed, dim);
    r.signs.resize(dim);
    for (int i = 0; i < dim; ++i) r.signs[i] = 1.0 - 2.0 * static_cast<double>(stream[i] >> 63);
    const int m = r.odd;
    r.dct.assign(static_cast<size_t>(m) * m, 0.0);
    const double row0 = std::sqrt(1.0 / m), rest = std::sqrt(2.0 / m);
    for (int i = 0; i < m; ++i) {
        for (int n = 0; n < m; ++n) {
            // Angle reduced exactly in integers before the cosine, as in rotations.dct_matrix.
            const long long arg = (static_cast<long long>(2 * n + 1) * i) % (4LL * m);
            r.dct[i * m + n] = (i == 0) ? row0 : std::cos(kPi * static_cast<double>(arg) / (2.0 * m)) * rest;
        }
    }
    return r;
}

}  // namespace fq

// A C ABI for tests (ctypes) and for callers that cannot link C++: fill caller buffers.
extern "C" {

// Returns 0 on success, 1 when the frame does not exist. Buffers may be null to query sizes.
int fq_frame_tables(int k, int rho, int d, int32_t* gather_index, double* gather_weight, int32_t* synth_bin,
                    double* synth_weight, double* dft) {
    try {
        const fq::FrameTables t = fq::make_frame_tables(k, rho, d);
        for (size_t i = 0; gather_index && i < t.gather_index.size(); ++i) gather_index[i] = t.gather_index[i];
        for (size_t i = 0; gather_weight && i < t.gather_weight.size(); ++i) gather_weight[i] = t.gather_weight[i];
        for (size_t i = 0; synth_bin && i < t.synth_bin.size(); ++i) synth_bin[i] = t.synth_bin[i];
        for (size_t i = 0; synth_weight && i < t.synth_weight.size(); ++i) synth_weight[i] = t.synth_weight[i];
        for (size_t i = 0; dft && i < t.dft.size(); ++i) dft[i] = t.dft[i];
        return 0;
    } catch (const std::exception&) {
        return 1;
    }
}

int fq_rotation_tables(int dim, uint64_t seed, double* signs, double* dct) {
    try {
        const fq::RotationTables r = fq::make_rotation_tables(dim, seed);
        for (size_t i = 0; signs && i < r.signs.size(); ++i) signs[i] = r.signs[i];
        for (size_t i = 0; dct && i < r.dct.size(); ++i) dct[i] = r.dct[i];
        return 0;
    } catch (const std::exception&) {
        return 1;
    }
}

}  // extern "C"
