"""Hand-written kernels the platform's compiler does not produce: the CPU flash attention
(``cpu_attention.cc``, built and loaded by ``cpu_flash``) and the bfloat16 CPU matrix product
(``cpu_matmul.cc``, by ``cpu_matmul``); ``parallel_for.h`` is their share of XLA's thread pool."""
