"""Hand-written kernels the platform's compiler does not produce: the CPU flash attention
(``cpu_attention.cc``, built and loaded by ``cpu_flash``)."""
