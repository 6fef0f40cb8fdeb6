"""Peak memory and speed of a row, predicted before it runs.

The model's shape comes from its config, built on the meta device (no weights). The core
fills an :class:`Estimate` from the row's settings (dtype, batch, lengths, checkpointing,
attention) and hands it to every plugin of the row through the ``estimate_memory`` hook:
tuners say what trains and what their optimizer keeps, kernels and offloading say what
activations they remove, packing says how full a row is. This module names no plugin.

Memory (bytes, the peak of ``torch.cuda.max_memory_allocated``):

    weights          base parameters x weight_bits / 8
    added            parameters a tuner adds (adapters, new blocks) x their bytes
    training state   trainable parameters x (gradient + optimizer state bytes)
    activations      per token of the longest micro-batch: checkpointed layer inputs (or
                     every layer's activations without checkpointing), one layer's
                     activations during its recompute, per-adapter saved inputs, and the
                     loss's logits (tokens x vocabulary, in several copies)

Speed: a step's matmul FLOPs (forward 2N, input gradients 2N, weight gradients 2N for
trained weights only, causal attention, the recompute of checkpointed layers) at the
device's matmul rate times an efficiency, plus the host's time for the aten operations a
micro-batch dispatches (counted per decoder layer, adapters included; a host-bound row, a
small model or LoRA at batch 1, is paced by that count). Plugins add operations, device time
or a measured factor. The per-token coefficients, the efficiency and the host's cost per
operation were fitted against the GPU rows of the committed stores; docs/performance.md ("Predicting memory and speed", made by bench/estimate_error.py) has every
row's error.

On a CPU the memory figure is what the same tensors take on the host (the row's peak RSS
also holds the Python process, the libraries and the allocator's caches, which this does
not model); the speed uses the host's measured matmul rate.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from tunerkit.metrics import attention_geometry

GIB = 1024 ** 3

#: bytes kept per token and logit by the loss (bf16 logits, their fp32 copy, log-softmax
#: and its gradient); fitted on the stores' LoRA rows at 512-8192 tokens
LOGIT_BYTES = 11.0
#: a decoder layer's activations per token during its forward/backward, in units of
#: 2 bytes x (6 hidden + 2 kv width + 4 ffn) (norm inputs, q/k/v/o, the SwiGLU's four)
LAYER_FACTOR = 1.0
#: matmul efficiency of a training step against the device's dense bf16 rate
EFFICIENCY = 0.58
#: The host's work: a micro-batch dispatches one aten operation after another, and a row whose
#: kernels are short waits on that (a 135M model, or LoRA at batch 1). Operations per decoder
#: layer of a llama-like model under SDPA, counted with a dispatch mode on a CPU (transformers 5,
#: peft 0.21; tests/test_estimate_ops.py recounts them): forward, backward of a frozen layer
#: (input gradients only), and the weight gradients a trained layer adds.
LAYER_FORWARD_OPS = 77
LAYER_INPUT_GRAD_OPS = 99
LAYER_WEIGHT_GRAD_OPS = 43
#: recomputing a checkpointed layer: its forward again, plus a few operations a layer and per
#: trained parameter tensor in it (the checkpoint's saved-tensor bookkeeping)
CHECKPOINT_LAYER_OPS = 6
CHECKPOINT_TENSOR_OPS = 4
#: trained parameter tensors of a decoder layer (seven linears, two norms)
LAYER_TENSORS = 9
#: A dispatched operation costs the host HOST_OP_COST times what one bare tiny operation takes
#: it (``tunerkit.metrics.host_op_us``, recorded with every GPU row since 2026-12-06: about 6 us
#: on the H100 hosts): autograd's bookkeeping and the Python around each module call come on
#: top; fitted on the stores (docs/performance.md). HOST_OP_US stands in where the host is unknown.
HOST_OP_COST = 2.0
HOST_OP_US = 6.0
#: Left to choose, torch's SDPA takes cuDNN attention first on these devices (Hopper), and
#: cuDNN builds an execution plan on the host for every input shape a process meets first
#: (forward and backward). SHAPE_PLAN_SECONDS is that cost per new shape, fitted on the
#: first-row test of docs/benchmarks.md (the same LoRA row first and second in its process).
CUDNN_FIRST_DEVICES = ("H100", "H200")
SHAPE_PLAN_SECONDS = 0.145
#: practical dense bf16 matmul rates (an 8192^3 matmul), TFLOP/s
DEVICE_TFLOPS = {"H200": 790.0, "H100": 790.0, "A100": 250.0, "L40": 180.0, "A10": 100.0, "4090": 150.0}
#: datasheet dense bf16 peaks (no sparsity), TFLOP/s, for the GPUs whose sheet states one plainly
DATASHEET_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


@dataclass
class ModelShape:
    hidden: int
    layers: int
    heads: int
    kv_width: int
    ffn: int
    vocab: int
    params: int
    layer_linear: dict  # one decoder layer's linear weights: name -> (in, out)
    head_params: int
    embed_params: int
    layer_other_params: int = 0  # one decoder layer's parameters outside its linears (norms)
    other_params: int = 0  # parameters outside the layers, embeddings and head (the final norm)
    attention: tuple = ()  # metrics.attention_geometry: what an attention kernel's plan is for, beside the length

    @property
    def layer_params(self) -> int:
        return sum(i * o for i, o in self.layer_linear.values())

    @property
    def layer_total_params(self) -> int:
        return self.layer_params + self.layer_other_params

    @property
    def unquantized_params(self) -> int:
        """Parameters outside the decoder layers' linears (embeddings, head, norms, biases): what
        bitsandbytes, GPTQ, AWQ and AQLM leave at full width."""
        return self.params - self.layers * self.layer_params

    @property
    def dense_params(self) -> int:
        """Weights a token meets in matmuls: every layer's linears and the head."""
        return self.layers * self.layer_params + self.head_params


def model_config(spec: str):
    from tunerkit.models.loading import model_path, resolve_model

    source = resolve_model(spec)
    if source.kind == "preset":
        return source.preset.config()
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_path(source))


def shape_of(spec: str) -> ModelShape:
    """The model's shape from its config, the model built on the meta device (no memory)."""
    from transformers import AutoModelForCausalLM

    config = model_config(spec)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    linear = {}
    if layers:
        for name, m in layers[0].named_modules():
            if isinstance(m, torch.nn.Linear):
                linear[name.split(".")[-1]] = (m.in_features, m.out_features)
    head = model.get_output_embeddings()
    embed = model.get_input_embeddings()
    hidden = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    tied = head is not None and embed is not None and head.weight is embed.weight
    layer_all = sum(p.numel() for p in layers[0].parameters()) if layers else 0
    params = sum(p.numel() for p in model.parameters())
    head_params = head.weight.numel() if head is not None else 0
    embed_params = 0 if tied else (embed.weight.numel() if embed is not None else 0)
    layer_linear_params = sum(i * o for i, o in linear.values())
    return ModelShape(hidden=hidden, layers=len(layers), heads=heads, kv_width=kv * head_dim,
                      ffn=getattr(config, "intermediate_size", 4 * hidden), vocab=config.vocab_size,
                      params=params, layer_linear=linear, head_params=head_params, embed_params=embed_params,
                      layer_other_params=layer_all - layer_linear_params,
                      other_params=params - len(layers) * layer_all - head_params - embed_params,
                      attention=attention_geometry(config))


@dataclass
class Estimate:
    """What one row keeps and computes; the core fills it, plugins change what they change."""

    shape: ModelShape
    weight_bytes: float
    param_bytes: int  # bytes of one parameter in the row's dtype
    peak_tokens: float  # tokens of the longest micro-batch
    mean_tokens: float  # tokens of an average micro-batch
    mean_samples: float  # samples in an average micro-batch
    micro_batches: int  # per optimizer step
    checkpointed_layers: int
    padded_tokens: float | None = None  # tokens a padded micro-batch computes (None: mean_tokens, no padding)
    real_peak_tokens: float | None = None  # the largest micro-batch's tokens without padding (None: peak_tokens)
    trainable_params: int = 0
    added_params: int = 0  # parameters a tuner adds beside the base (adapters, blocks)
    added_param_bytes: int = 4
    grad_bytes: int = 4  # per trainable parameter
    optimizer_bytes: float = 8.0  # per trainable parameter (AdamW: two states)
    optimizer_params: int | None = None  # parameters with optimizer state (None: trainable_params)
    live_grad_params: int | None = None  # gradients alive at once (None: all trainable)
    layer_input_bytes: float = 0.0  # per token and checkpointed layer
    layer_bytes: float = 0.0  # per token, one layer's activations
    extra_layer_bytes: float = 0.0  # per token and layer, added by plugins (adapter inputs, ...)
    extra_layer_fixed_bytes: float = 0.0  # per layer whose activations are kept, whatever its tokens (weight copies)
    logit_bytes: float = 0.0  # per token
    resident_checkpoint_layers: float | None = None  # checkpointed inputs kept on the device (None: all)
    extra_bytes: float = 0.0
    trained_weight_params: int = 0  # weights whose gradient is computed (FLOPs)
    every_weight_trains: bool = False  # set once by full fine-tuning (rows list it beside its variants)
    speed_factor: float = 1.0
    # the host's operations (see LAYER_FORWARD_OPS): per decoder layer, adapters included
    layer_forward_ops: float = LAYER_FORWARD_OPS
    layer_backward_ops: float = LAYER_INPUT_GRAD_OPS
    trained_layer_tensors: float = 0.0  # trained parameter tensors per layer (adapters' A, B; a full layer's 9)
    weight_grad_layers: float = 0.0  # layers whose base weights take gradients
    extra_layers: int = 0  # decoder layers a tuner adds (LLaMA-Pro's blocks)
    backward_layer_fraction: float = 1.0  # share of layers the backward reaches (none below the lowest trained one)
    host_op_factor: float = 1.0  # fewer launches than operations (compiled layers)
    host_op_us: float = HOST_OP_US  # the machine's cost of one bare operation (metrics.host_op_us)
    step_ops: float = 0.0  # operations once per optimizer step (AdaLoRA's rank allocator)
    device_seconds: float = 0.0  # device work per micro-batch that is not the matmul count (DoRA's weight norms)
    # each micro-batch's padded input shape (samples, tokens), in the loop's order over the run
    input_shapes: list[tuple[int, int]] | None = None
    input_tokens: list[int] | None = None  # each of those micro-batches' real tokens
    warmup_micro_batches: int = 0  # the first micro-batches, left out of the timing
    shape_plans: bool = True  # attention through SDPA, one kernel call per padded shape (varlen: False)
    plan_seconds: float = 0.0  # host seconds per timed micro-batch planning new shapes (estimate_row sets it)
    # ZeRO's partitions: each GPU holds 1/N of these (a sharding plugin sets N to the world size)
    weight_shards: int = 1  # weights and added parameters (ZeRO-3)
    state_shards: int = 1  # gradients and optimizer state (ZeRO-2 and 3)
    notes: list = field(default_factory=list)

    def memory_parts(self) -> dict:
        s, tok = self.shape, self.peak_tokens
        grads = (self.trainable_params if self.live_grad_params is None else self.live_grad_params) * self.grad_bytes
        opt = (self.trainable_params if self.optimizer_params is None else self.optimizer_params) * self.optimizer_bytes
        kept = self.checkpointed_layers if self.resident_checkpoint_layers is None else \
            min(self.checkpointed_layers, self.resident_checkpoint_layers)
        uncheckpointed = s.layers - self.checkpointed_layers
        per_layer = self.layer_bytes + self.extra_layer_bytes
        acts = tok * (kept * self.layer_input_bytes + uncheckpointed * per_layer
                      + (per_layer if self.checkpointed_layers else 0) + self.logit_bytes)
        acts += (uncheckpointed + (1 if self.checkpointed_layers else 0)) * self.extra_layer_fixed_bytes
        return {"weights": self.weight_bytes / self.weight_shards,
                "added": self.added_params * self.added_param_bytes / self.weight_shards,
                "gradients": grads / self.state_shards, "optimizer": opt / self.state_shards,
                "activations": acts, "other": self.extra_bytes}

    def peak_bytes(self) -> float:
        return sum(self.memory_parts().values())

    def flops(self, tokens: float, square_tokens: float) -> float:
        """Matmul FLOPs of ``tokens`` tokens (padding included) in samples whose squared
        lengths sum to ``square_tokens``."""
        s = self.shape
        per_token = 4 * s.dense_params + 2 * self.trained_weight_params + 6 * self.added_params
        attention = 6 * square_tokens * s.hidden * s.layers  # causal: 6 L^2 h per layer and sample of L tokens
        recompute = 2 * tokens * (self.checkpointed_layers * s.layer_params)
        return per_token * tokens + attention + recompute

    def step_flops(self) -> float:
        tok = (self.padded_tokens or self.mean_tokens) * self.micro_batches
        return self.flops(tok, tok * self.mean_tokens / max(self.mean_samples, 1e-9))

    def timed_batches(self) -> list[tuple[int, int, int]] | None:
        """The timed micro-batches as the loader draws them, (samples, padded length, real
        tokens) each; None where the data is unknown or a plugin reshapes the batches (packed
        or flattened rows)."""
        if not self.input_shapes or not self.input_tokens or self.padded_tokens is None:
            return None
        timed = [(n, longest, real) for (n, longest), real in
                 zip(self.input_shapes[self.warmup_micro_batches:], self.input_tokens[self.warmup_micro_batches:])]
        return timed or None

    def host_ops(self) -> float:
        """Aten operations one micro-batch dispatches in its decoder layers (and its share of
        the optimizer step's)."""
        layers = self.shape.layers + self.extra_layers
        forward = layers * self.layer_forward_ops
        backward = layers * self.backward_layer_fraction * self.layer_backward_ops
        backward += self.weight_grad_layers * LAYER_WEIGHT_GRAD_OPS
        checkpointed = min(self.checkpointed_layers, layers)
        recompute = checkpointed * (self.layer_forward_ops + CHECKPOINT_LAYER_OPS)
        recompute += CHECKPOINT_TENSOR_OPS * self.trained_layer_tensors * checkpointed
        return (forward + backward + recompute) * self.host_op_factor + self.step_ops / max(self.micro_batches, 1)

    def device_time(self, flops: float, tflops: float) -> float:
        """Device seconds of one micro-batch of ``flops`` matmul FLOPs."""
        return flops / (tflops * 1e12 * EFFICIENCY) + self.device_seconds

    def host_time(self) -> float:
        """Host seconds of one micro-batch (the same whatever its length)."""
        return self.host_ops() * HOST_OP_COST * self.host_op_us * 1e-6

    def shape_keys(self, shapes: list[tuple[int, int]] | None = None) -> set:
        """``shapes`` (default: every micro-batch's) as the loop's counter keys them: with the
        model's attention geometry, since a plan for one model's heads serves no other's."""
        return {(self.shape.attention, shape) for shape in (self.input_shapes or () if shapes is None else shapes)}

    def new_timed_shapes(self, met: set | frozenset = frozenset()) -> int:
        """Input shapes the timed micro-batches meet that neither the warm-up nor ``met``
        (:meth:`shape_keys` of the rows the process trained before this one) did."""
        if not self.input_shapes:
            return 0
        before = set(met) | self.shape_keys(self.input_shapes[:self.warmup_micro_batches])
        return len(self.shape_keys(self.input_shapes[self.warmup_micro_batches:]) - before)

    def tokens_per_s(self, tflops: float) -> float:
        host = self.host_time()
        # the loop reads the loss and synchronises within each step, so the host's work and the
        # device's overlap little: the stores fit their sum better than the longer of the two;
        # a quantized base's factor scales its kernels' work, not cuDNN's planning on the host
        timed = self.timed_batches()
        if timed:
            # a row's tokens/s is over its timed steps, and a short row times only one or two:
            # their own samples, not the data's mean, decide it
            seconds = sum(self.device_time(self.flops(n * longest, n * longest ** 2), tflops) + host
                          for n, longest, _ in timed)
            return sum(real for *_, real in timed) / (seconds / self.speed_factor + self.plan_seconds * len(timed))
        device = self.device_time(self.step_flops() / self.micro_batches, tflops)
        seconds = (device + host) * self.micro_batches / self.speed_factor + self.plan_seconds * self.micro_batches
        return self.mean_tokens * self.micro_batches / seconds


def rate_of(table: dict[str, float], device_name: str) -> float | None:
    """The rate ``table`` gives the device whose name contains one of its keys ("NVIDIA H200")."""
    return next((tf for key, tf in table.items() if key.lower() in device_name.lower()), None)


def device_tflops(name: str | None = None) -> tuple[str, float]:
    """(device name, matmul TFLOP/s): a known GPU's rate, else a short matmul on this host."""
    if name is None:
        name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return name, rate_of(DEVICE_TFLOPS, name) or measured_tflops()


def measured_tflops(n: int = 512, repeats: int = 4) -> float:
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e12


#: text records tokenized to learn a dataset's lengths (enough for the distribution's tail)
LENGTH_SAMPLE = 4096


def sample_lengths(row) -> list[int] | None:
    """Token lengths of the row's training samples after its truncation: synthetic data's
    from its spec, text data's by tokenizing it as the loop does where the model's tokenizer is
    on this machine (bundled or local models, and the presets, which borrow the bundled one);
    ``None`` where it is not (a hub model: an estimate fetches nothing) or the data cannot be read."""
    s = row.settings
    if not s.dataset:
        return None
    if not s.dataset.startswith("synthetic:"):
        return _text_lengths(row)
    from tunerkit.data.sources import load_records
    from tunerkit.data.truncation import apply_truncation

    # lengths do not depend on the token ids drawn: a small vocabulary draws them faster
    records = load_records(s.dataset, seed=s.seed, vocab_size=1000, rows=None)
    kept, _ = apply_truncation([{"input_ids": r["input_ids"], "labels": r["input_ids"]} for r in records],
                               s.max_length, s.truncation_strategy)
    return [len(r["input_ids"]) for r in kept] or None


def _text_lengths(row) -> list[int] | None:
    """Lengths of the row's text training samples, tokenized with the row's tokenizer and chat
    template. Padding to the longest of a batch, not to ``max_length``, sets a text row's peak:
    the quality recipe's arithmetic samples are about 40 tokens under a 128-token max_length,
    and assuming 128 put its SmolLM2 rows at three times their measured memory."""
    from tunerkit.core import encode_training_records, split_records
    from tunerkit.data.chat import ensure_template
    from tunerkit.errors import UserError
    from tunerkit.models import loading

    s = row.settings
    try:
        source = loading.resolve_model(s.model)
        if source.kind == "hub":
            return None
        tokenizer = loading.load_tokenizer(source)
        ensure_template(tokenizer, s.chat_template)
        train, _ = split_records(s, len(tokenizer), held_out=False)
        kept, _ = encode_training_records(tokenizer, train[:LENGTH_SAMPLE], s)
    except (UserError, OSError, ImportError, ValueError, KeyError):
        return None
    return [len(r["input_ids"]) for r in kept] or None


def token_plan(row, lengths: list[int] | None) -> tuple[float, float, float, float, float]:
    """(peak tokens, mean real tokens, mean samples, mean padded tokens, peak real tokens) of
    one micro-batch, before packing changes them.

    Padded batches: ``batch_size`` samples padded to the longest (the peak is a batch of
    ``max_length``-long samples when any sample is that long). The peak of real tokens is what
    a flattened batch without padding holds at most: the expected largest sum of
    ``batch_size`` lengths over the run's micro-batches. Unknown data: ``max_length``."""
    s = row.settings
    if not lengths:
        full = float(s.batch_size * s.max_length)
        return full, full, float(s.batch_size), full, full
    trained = max(1, min(len(lengths), int((s.token_budget or sum(lengths)) / (sum(lengths) / len(lengths)))))
    top = sorted(lengths)[-max(1, len(lengths) // trained):]  # the longest sample a run of that size meets
    mean = sum(lengths) / len(lengths)
    padded, peak = mean, float(s.batch_size * top[0])
    real_peak = peak
    if s.batch_size > 1:  # batches of batch_size samples drawn from these lengths
        gen = torch.Generator().manual_seed(s.seed)
        lens = torch.tensor(lengths, dtype=torch.float64)
        draws = lens[torch.randint(len(lengths), (256, s.batch_size), generator=gen)]
        padded = float(draws.max(dim=1).values.mean())  # the expected longest of a batch
        runs = lens[torch.randint(len(lengths), (64, max(1, trained // s.batch_size), s.batch_size), generator=gen)]
        real_peak = min(peak, float(runs.sum(dim=-1).max(dim=1).values.mean()))
    return peak, float(s.batch_size * mean), float(s.batch_size), float(s.batch_size * padded), real_peak


def run_shapes(row, lengths: list[int] | None) -> tuple[list[tuple[int, int]] | None, int, list[int] | None]:
    """Each micro-batch's padded shape (samples, longest sample) over the row's run, in the
    order the loop's loader draws them (a permutation seeded by the row's seed per epoch), how
    many micro-batches its timing leaves out as warm-up, and each micro-batch's real tokens.
    Steps are counted as the loop plans them (max_steps, else epochs cut by the token budget),
    and the run ends, as the loop's does, after the step that reaches the token budget. None
    without the data's lengths."""
    s = row.settings
    if not lengths:
        return None, 0, None
    from tunerkit.steps import planned_steps

    n, per_batch, accumulation = len(lengths), s.batch_size, s.gradient_accumulation_steps
    steps = planned_steps(s, math.ceil(n / per_batch), sum(lengths) / n)

    def epochs():
        generator = torch.Generator().manual_seed(s.seed)
        while True:
            # each epoch's iterator first draws its workers' base seed from the loader's generator
            torch.empty((), dtype=torch.int64).random_(generator=generator)
            order = torch.randperm(n, generator=generator).tolist()
            yield [[lengths[i] for i in order[start:start + per_batch]] for start in range(0, n, per_batch)]

    # optimizer steps of ``accumulation`` micro-batches; an epoch's last step may be shorter
    shapes, real, sizes, tokens = [], [], [], 0
    for epoch in epochs():
        for i in range(0, len(epoch), accumulation):
            window = epoch[i:i + accumulation]
            shapes += [(len(batch), max(batch)) for batch in window]
            real += [sum(batch) for batch in window]
            sizes.append(len(window))
            tokens += sum(real[-len(window):])
            if len(sizes) >= steps or (s.token_budget and tokens >= s.token_budget):
                # the loop's warm-up counts from the steps it planned, not those it ran
                return shapes, sum(sizes[:min(s.timing_warmup_steps, steps - 1)]), real


def plans_attention_shapes(row, est: Estimate, device_name: str | None) -> bool:
    """Whether the row's attention is cuDNN's, which plans every new shape: torch's SDPA left to
    choose (or told cuDNN first) on a device where it takes cuDNN first. Assumes SDPA, not the
    flash_attn package (``attention = "flash"`` falls back to SDPA where it is not installed)."""
    s = row.settings
    if not est.shape_plans or s.attention == "eager" or not device_name:
        return False
    if s.sdpa_kernels is not None and s.sdpa_kernels[0] != "cudnn":
        return False
    return any(key.lower() in device_name.lower() for key in CUDNN_FIRST_DEVICES)


def weight_bytes(shape: ModelShape, weight_bits: float, item: int) -> float:
    """The base weights' bytes. A quantized base (fewer bits than the row's dtype) keeps what
    lies outside the decoder linears (embeddings, head, norms) in the row's dtype, as
    bitsandbytes, GPTQ, AWQ and AQLM checkpoints do: counting them at 4 bits put qwen-7b's GPTQ
    weights at 3.7 GiB, measured 5.5 (its two 151,936-row tables are 2.3 GiB in bf16)."""
    if weight_bits >= 8 * item:
        return shape.params * weight_bits / 8
    kept = shape.unquantized_params
    return (shape.params - kept) * weight_bits / 8 + kept * item


def base_estimate(row, shape: ModelShape, weight_bits: float, gpu: bool) -> Estimate:
    from tunerkit.core import resolve_dtype

    s = row.settings
    device = torch.device("cuda" if gpu else "cpu")
    item = resolve_dtype(s.dtype, device).itemsize
    lengths = sample_lengths(row)
    peak, mean, samples, padded, real_peak = token_plan(row, lengths)
    checkpointed = (shape.layers - (s.uncheckpointed_layers or 0)) if s.gradient_checkpointing else 0
    est = Estimate(shape=shape, weight_bytes=weight_bytes(shape, weight_bits, item), param_bytes=item, peak_tokens=peak,
                   mean_tokens=mean, mean_samples=samples, micro_batches=s.gradient_accumulation_steps,
                   checkpointed_layers=checkpointed, padded_tokens=padded, real_peak_tokens=real_peak)
    est.input_shapes, est.warmup_micro_batches, est.input_tokens = run_shapes(row, lengths)
    est.layer_input_bytes = shape.hidden * item
    est.layer_bytes = LAYER_FACTOR * item * (6 * shape.hidden + 2 * shape.kv_width + 4 * shape.ffn)
    # the logits are in the row's dtype; the rest (log-softmax, its gradient) is fp32 in any dtype
    est.logit_bytes = (LOGIT_BYTES - 2 + item) * shape.vocab
    if s.attention == "eager":
        # the attention probabilities are materialised, heads x length per token, and kept twice:
        # the fp32 softmax output (its backward needs it) and its cast to the row's dtype (for
        # the product with v); in fp32 the cast is the same tensor
        kept = 4 + (item if item < 4 else 0)
        est.layer_bytes += kept * shape.heads * peak / max(s.batch_size, 1)
    return est


def build_estimate(row, gpu: bool) -> Estimate:
    """The row's :class:`Estimate`: the core's part, then every plugin's ``estimate_memory``."""
    from tunerkit.core import CoreDefaults
    from tunerkit.plugins import get_plugin, make_manager

    pm = make_manager([CoreDefaults()], [get_plugin(n)(row.options[n]) for n in row.plugins])
    shape = shape_of(row.settings.model)
    bits = pm.hook.weight_bits(row=row)
    if not gpu and row.settings.dtype == "auto":  # weight_bits answered for this machine's dtype
        bits = 32 if bits == 16 else bits
    elif gpu and row.settings.dtype == "auto" and bits == 32:
        bits = 16
    est = base_estimate(row, shape, bits, gpu)
    pm.hook.estimate_memory(row=row, shape=shape, estimate=est)
    return est


def local_host_op_us() -> float | None:
    """This machine's cost of one bare operation on its GPU, where the row would run; None
    without a GPU (the estimate then takes HOST_OP_US)."""
    if not torch.cuda.is_available():
        return None
    from tunerkit.metrics import host_op_us

    return host_op_us(torch.device("cuda"))


def estimate_row(row, tflops: float | None = None, gpu: bool | None = None, host_op_us: float | None = None,
                 device_name: str | None = None, shapes_met: set | None = None) -> dict:
    """The prediction for one resolved row: peak allocated GiB (with its parts) and tokens/s,
    on a GPU (``gpu``; default: whether this machine has one) of ``tflops`` (default: this machine's),
    driven by a host whose bare operation takes ``host_op_us`` (default: this machine's when it
    has a GPU, where the row would run; else HOST_OP_US). On a ``device_name`` whose SDPA plans
    each new shape (cuDNN first), the timed steps pay for the shapes neither their warm-up nor
    ``shapes_met`` (what the process trained on before; None: not known, no plans counted) met.
    ``input_shapes`` in the result: every shape the row trains on, for the rows after it."""
    gpu = torch.cuda.is_available() if gpu is None else gpu
    if device_name is None and gpu and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name(0)
    est = build_estimate(row, gpu)
    new_shapes = 0
    if shapes_met is not None and gpu and plans_attention_shapes(row, est, device_name):
        new_shapes = est.new_timed_shapes(shapes_met)
        timed = max(1, len(est.input_shapes or ()) - est.warmup_micro_batches)
        est.plan_seconds = new_shapes * SHAPE_PLAN_SECONDS / timed
    if tflops is None:
        tflops = device_tflops()[1]
    if host_op_us is None:
        host_op_us = local_host_op_us()
    if host_op_us:
        est.host_op_us = host_op_us
    parts = {k: v / GIB for k, v in est.memory_parts().items()}
    return {"row": row.name, "peak_alloc_gib": sum(parts.values()), "parts_gib": parts,
            "tokens_per_s": est.tokens_per_s(tflops), "trainable_params": est.trainable_params,
            "peak_tokens": est.peak_tokens, "notes": list(est.notes), "new_timed_shapes_planned": new_shapes,
            "input_shapes": est.shape_keys()}


def model_flops_per_token(est: Estimate) -> float:
    """Matmul FLOPs a step must do per real token (MFU's numerator): forward and input
    gradients of every weight (4N), weight gradients of trained weights (2N), adapters at 6N,
    causal attention; the recompute of checkpointed layers and padding are not counted."""
    s = est.shape
    seq = est.mean_tokens / max(est.mean_samples, 1e-9)
    return (4 * s.dense_params + 2 * est.trained_weight_params + 6 * est.added_params
            + 6 * seq * s.hidden * s.layers)


def utilisation(row, tokens_per_s_per_gpu: float, device_name: str) -> dict:
    """Model TFLOP/s a GPU sustained, and MFU against two named ceilings: the practical dense
    bf16 matmul rate (``DEVICE_TFLOPS``) and the datasheet's peak (``DATASHEET_TFLOPS``)."""
    tflops = model_flops_per_token(build_estimate(row, gpu=True)) * tokens_per_s_per_gpu / 1e12
    out = {"model_tflops_per_s": tflops}
    practical, sheet = rate_of(DEVICE_TFLOPS, device_name), rate_of(DATASHEET_TFLOPS, device_name)
    if practical:
        out.update(mfu_pct=100 * tflops / practical, mfu_ceiling_tflops=practical)
    if sheet:
        out.update(mfu_datasheet_pct=100 * tflops / sheet, mfu_datasheet_tflops=sheet)
    return out


def relative_error(predicted: float | None, measured: float | None) -> float | None:
    if not predicted or not measured:
        return None
    return predicted / measured - 1.0


def fit_note(errors: list[float], bound: float) -> str:
    inside = sum(abs(e) <= bound for e in errors)
    worst = max((abs(e) for e in errors), default=math.nan)
    return f"{inside}/{len(errors)} within +/-{bound:.0%}, worst {worst:.0%}"
