// FQ_HD marks functions that host and device code both call: __host__ __device__ under nvcc,
// plain functions under a host compiler (so that the layout headers build with g++ alone).
#pragma once

#if defined(__CUDACC__)
#define FQ_HD __host__ __device__
#define FQ_HD_INLINE __host__ __device__ __forceinline__
#else
#define FQ_HD
#define FQ_HD_INLINE inline
#endif
