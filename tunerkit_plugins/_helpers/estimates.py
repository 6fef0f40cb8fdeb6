"""What each plugin adds to or removes from a row's predicted memory and speed.

Called from the plugins' ``estimate_memory`` hooks (``tunerkit.estimate`` names no plugin).
Every function changes the :class:`tunerkit.estimate.Estimate` it is given. The host
operations each adds were counted on a CPU (tests/test_estimate_ops.py recounts them); the
speed factors and device seconds are measured on the GPU (docs/performance.md), not derived
from first principles.
"""

from __future__ import annotations

from tunerkit.estimate import LAYER_TENSORS
from tunerkit.targets import LLAMA_LIKE


def target_names(targets, shape, default=LLAMA_LIKE) -> list[str]:
    """The layer linears a LoRA-style ``targets`` option adapts, by name."""
    if isinstance(targets, list):
        return [t for t in targets if t in shape.layer_linear]
    if targets == "ALL":
        return list(shape.layer_linear)
    if targets == "DEFAULT":
        return [t for t in default if t in shape.layer_linear]
    return [targets] if targets in shape.layer_linear else []


def low_rank_adapters(est, shape, names, rank: int, dropout: float, extra_per_target: int = 0,
                      extra_per_rank: int = 0) -> None:
    """Rank-``rank`` A/B pairs on ``names`` in every layer, kept in fp32 as PEFT keeps them;
    each adapted linear saves its fp32 (dropped-out) input for A's gradient."""
    dims = [shape.layer_linear[n] for n in names]
    n = shape.layers * sum(rank * (i + o + extra_per_rank) + extra_per_target * o for i, o in dims)
    est.added_params += n
    est.trainable_params += n
    est.added_param_bytes = est.grad_bytes = 4
    est.optimizer_bytes = 8.0
    est.extra_layer_bytes += sum(i for i, _ in dims) * (4 + (1 if dropout else 0))
    adapter_ops(est, len(names), *(LORA_OPS_DROPOUT if dropout else LORA_OPS))
    est.notes.append(f"{n / 1e6:.2f} M adapter parameters on {', '.join(names)}")


#: aten operations one adapted linear adds to a layer's forward and backward (its own weight
#: gradients included), counted like tunerkit.estimate.LAYER_FORWARD_OPS: PEFT 0.21's LoRA
#: with and without dropout, and DoRA on top of LoRA (the weight norm each forward)
LORA_OPS = (10, 20)
LORA_OPS_DROPOUT = (14, 21)
DORA_EXTRA_OPS = (21, 17)


def adapter_ops(est, count: int, forward: int, backward: int, tensors: int = 2) -> None:
    """``count`` adapted linears a layer, each adding ``forward``/``backward`` host operations
    and ``tensors`` trained parameter tensors."""
    est.layer_forward_ops += count * forward
    est.layer_backward_ops += count * backward
    est.trained_layer_tensors += count * tensors


#: AdaLoRA beside LoRA, per adapted linear (counted like LORA_OPS, peft 0.21): the singular
#: values and the orthogonality regulariser in each forward and backward, and the rank
#: allocator's importance scores after each optimizer step
ADALORA_EXTRA_OPS = (19, 31)
ADALORA_STEP_OPS = 60


def rank_allocation(est, shape, adapted: int) -> None:
    """AdaLoRA's host work beside LoRA's, ``adapted`` linears a layer."""
    adapter_ops(est, adapted, *ADALORA_EXTRA_OPS, tensors=1)
    est.step_ops += ADALORA_STEP_OPS * adapted * shape.layers


def dora_magnitudes(est, shape, names, dropout: float, autocast: bool = False) -> None:
    """What PEFT's DoRA keeps for the magnitude's gradient beside LoRA's: per adapted linear and
    token, the LoRA result (fp32) and the base result (fp32 when dropout makes DoRA recompute it
    from the dropped-out fp32 input, else the base layer's bf16 output); with dropout also the
    weight cast to fp32 for that recompute, once per layer whose activations are kept. Worked
    out from peft 0.21's DoraLinearLayer.forward; the SmolLM2 quality row without checkpointing
    measured 1.08 GiB above LoRA's, this gives 1.08."""
    dims = [shape.layer_linear[n] for n in names]
    est.extra_layer_bytes += sum(o for _, o in dims) * (4 + (4 if dropout else 2))
    if dropout:
        est.extra_layer_fixed_bytes += 4 * sum(i * o for i, o in dims)
    adapter_ops(est, len(names), *DORA_EXTRA_OPS, tensors=1)
    if not autocast:
        est.device_seconds += DORA_SECONDS_PER_WEIGHT * shape.layers * sum(i * o for i, o in dims)


#: Device seconds per adapted weight element and micro-batch for DoRA's weight norm without
#: autocast (PEFT computes W + BA for every adapted weight in every forward, in the adapters'
#: fp32): the qwen-7b DoRA rows of two H200 starts (764 and 777 tokens/s at 1,302 tokens a
#: micro-batch) spent about 1.15 s a micro-batch beyond their matmuls and host operations, on
#: 6.5e9 adapted weights. The fast-mode row (autocast, compiled layers) showed no such cost.
#: Fitted on those two rows (docs/performance.md).
DORA_SECONDS_PER_WEIGHT = 1.8e-10


def every_weight(est, shape) -> None:
    """Full fine-tuning: every weight trains, gradients and AdamW's two states in the row's dtype.
    Counted once, whichever of ``full`` and a variant needing it (LISA, GaLore) comes first."""
    if est.every_weight_trains:
        return
    est.every_weight_trains = True
    est.trainable_params += shape.params
    est.trained_weight_params += shape.dense_params
    est.grad_bytes = est.param_bytes
    est.optimizer_bytes = 2.0 * est.param_bytes
    est.weight_grad_layers = shape.layers
    est.trained_layer_tensors += LAYER_TENSORS


def new_blocks(est, shape, count: int) -> None:
    """Copies of decoder layers inserted and trained (LLaMA-Pro): their weights, gradients and
    state, and their activations as more layers."""
    n = count * shape.layer_total_params
    est.added_params += n
    est.trainable_params += n
    est.trained_weight_params += n
    est.added_param_bytes = est.grad_bytes = est.param_bytes
    est.optimizer_bytes = 2.0 * est.param_bytes
    if est.checkpointed_layers:
        est.checkpointed_layers += count
    est.extra_layers += count
    est.weight_grad_layers += count
    # the first new block follows layers // count original ones, which the backward never reaches
    est.backward_layer_fraction = 1 - (shape.layers // count) / (shape.layers + count)
    est.trained_layer_tensors += LAYER_TENSORS * count / (shape.layers + count)
    est.notes.append(f"{count} new blocks, {n / 1e6:.0f} M parameters")


#: aten operations of one bottleneck adapter (down, activation, up, residual add)
BOTTLENECK_OPS = (8, 14)


def bottlenecks(est, shape, dim: int) -> None:
    """A hidden -> dim -> hidden bottleneck after every layer's MLP, in the row's dtype."""
    n = shape.layers * (2 * shape.hidden * dim + dim + shape.hidden)
    est.added_params += n
    est.trainable_params += n
    est.added_param_bytes = est.param_bytes
    est.grad_bytes = 4
    est.optimizer_bytes = 8.0
    est.extra_layer_bytes += est.param_bytes * (shape.hidden + 2 * dim)
    adapter_ops(est, 1, *BOTTLENECK_OPS, tensors=4)


def some_layers(est, shape, layers: int, embeddings: bool, head: bool) -> None:
    """LISA: ``layers`` decoder layers (and the embeddings/head when asked) train at a time;
    gradients and optimizer state exist for those only."""
    every_weight(est, shape)
    live = (layers * shape.layer_total_params + shape.other_params + (shape.embed_params if embeddings else 0)
            + (shape.head_params if head else 0))
    est.trainable_params = est.live_grad_params = est.optimizer_params = live
    est.trained_weight_params = live
    # weight gradients in the active layers only; without trained embeddings the backward stops
    # at the lowest active layer, on average 1/(layers + 1) of the way up
    est.weight_grad_layers = layers
    est.trained_layer_tensors = LAYER_TENSORS * layers / shape.layers
    if not embeddings:
        est.backward_layer_fraction = layers / (layers + 1)
    est.notes.append(f"{live / 1e6:.0f} M parameters train at a time")


def projected_state(est, shape, rank: int, per_parameter: bool, accumulation: int = 1) -> None:
    """GaLore: AdamW's states for each layer linear live in a rank-``rank`` projection
    (rank x the longer side) plus the projector; other weights keep full states. Per-parameter
    stepping frees each gradient as soon as it is used, but only in the last micro-batch of
    an accumulation window: before it, every gradient accumulates whole as usual (on one
    H100 the qwen-7b row at accumulation 4 peaked 14.3 GiB above the same row at 1)."""
    linear = shape.layers * shape.layer_params
    dims = [(min(rank, i, o), i, o) for i, o in shape.layer_linear.values()]  # the SVD has min(i, o) vectors
    projected = shape.layers * sum(r * max(i, o) for r, i, o in dims)
    projector = shape.layers * sum(r * min(i, o) for r, i, o in dims)
    est.optimizer_params = shape.params - linear + projected + projector // 2
    if per_parameter and accumulation == 1:
        est.live_grad_params = max(shape.head_params, shape.embed_params, max(
            (i * o for i, o in shape.layer_linear.values()), default=0))


def fused_loss(est, shape) -> None:
    """lm_head and cross-entropy in chunks: no tokens x vocabulary logits, a chunk's worth instead."""
    est.logit_bytes = 4 * shape.hidden * est.param_bytes


def offloaded_checkpoints(est, in_flight: int) -> None:
    """Checkpointed layer inputs wait in host memory: ``in_flight`` of them on the device at once."""
    est.resident_checkpoint_layers = in_flight


def packed_rows(est, tokens: int, fill: float = 0.97) -> None:
    """Whole samples packed into micro-batches of ``tokens`` tokens (best-fit fills ~97 % of each)."""
    per_sample = est.mean_tokens / max(est.mean_samples, 1e-9)
    est.peak_tokens = float(tokens)
    est.mean_tokens = fill * est.peak_tokens
    est.mean_samples = est.mean_tokens / per_sample
    est.padded_tokens = None
    est.shape_plans = False  # varlen attention over the packed row: no per-shape SDPA plans


def flattened(est) -> None:
    """Micro-batches flattened into one row: no padding is computed or kept, so the largest
    micro-batch holds its samples' real tokens, not batch_size times the longest."""
    est.padded_tokens = None
    est.shape_plans = False  # varlen attention per sample: no per-shape SDPA plans
    if est.real_peak_tokens is not None:
        est.peak_tokens = est.real_peak_tokens
