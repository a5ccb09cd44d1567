"""The model skeleton and everything a forward pass runs through.

* ``skeleton``: the one decoder (ModelConfig, Transformer); attention asks the encoding for
  its hooks and never branches on a method's name.
* ``attention_paths``: the attention computations (reference, ``dot_product``, chunked and
  their cross forms) over rotated q/k and per-token metadata.
* ``attention``: the one attention contract, ``attend``, choosing among those paths, the fused
  kernels and context parallelism; LongLoRA's shifted sparse attention.
* ``attention_fused``: cuDNN, Pallas GPU, TPU splash and the CPU kernel, chosen per call.
* ``context_parallel``: attention over rows split along a ``sequence`` mesh axis.
* ``kernels``: hand-written kernels (the CPU flash attention, through XLA's FFI).
* ``layer_scan``: the layers unrolled or as one ``lax.scan`` over stacked weights.
* ``forward``: an encoding's hooks for a model, the per-token loss, the parameters' layout.
* ``lora``: low-rank adapters on the skeleton's dense layers.
* ``generate``: KV-cached prefill and greedy or sampled decoding.
"""
