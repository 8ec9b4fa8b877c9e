// The alif CPU kernels compiled for the build's baseline instruction set, with ATen's generic
// at::vec::Vectorized as the value type; alif_cpu.cpp runs them where the CPU has neither AVX-512
// nor AVX2, or when the tests ask for them. A unit of its own, like the wider copies, so the build
// compiles the three copies in parallel.
#define ALIF_ISA_ENABLED 1
#define ALIF_ISA_CPU_HAS true
#define ALIF_ISA baseline

#include "cpu/alif_cpu_isa_impl.h"
