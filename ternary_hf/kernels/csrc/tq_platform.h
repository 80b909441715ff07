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

#endif
