/* Platform layer of the ternary-hf CPU kernels: headers, and the few things that differ between CPUs.
   Everything ISA-specific is behind a feature macro that the compiler defines for the target (-march=...),
   so the same sources build a portable library on any 64-bit Linux CPU (x86-64 baseline, aarch64, ...). */
#ifndef TQ_PLATFORM_H
#define TQ_PLATFORM_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <stdatomic.h>
#include <limits.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/futex.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
/* a spin-wait hint: lets the sibling hyper-thread run while a pool thread polls */
static inline void tq_cpu_relax(void) { _mm_pause(); }
#elif defined(__aarch64__) || defined(__arm__)
static inline void tq_cpu_relax(void) { __asm__ __volatile__("yield" ::: "memory"); }
#else
static inline void tq_cpu_relax(void) { }
#endif

/* Smallest work worth an OpenMP team: a row-wise pass over fewer elements (tens of microseconds alone) or a GEMM
   of fewer multiply-adds costs more in waking and joining the second thread than it saves, and on a loaded
   machine a join can wait a whole scheduler slice for a descheduled thread (measured: ~20 ms per call for
   32 x 2304 passes at load 13 on 2 cores, where the same pass alone takes 0.1 ms; a 32 x 768 x 2304 GEMM:
   0.13 ms on one thread, a median of 21 ms on two). */
#define TQ_PAR_MIN 262144
#define TQ_GEMM_PAR_MIN 268435456

#endif
