"""Model presets: the architecture dimensions of every model in ms-swift's tables.

A preset builds a randomly initialised model of a transformers-native architecture with
the original's sizes. Random weights serve speed and memory measurements only; every
row that uses one is marked ``random_weights`` in the results and reports.

What differs from the originals (see docs/models.md):
- qwen-1 (qwen-*-chat) fuses q, k, v into one ``c_attn`` linear; the preset uses Qwen2's
  separate q_proj/k_proj/v_proj with biases. Same FLOPs and parameters, but LoRA on
  "DEFAULT" targets three matrices instead of one (6.29 M vs ms-swift's 4.19 M at r=8).
- chatglm3 and baichuan2 use fused QKV (``query_key_value``/``W_pack``), chatglm3
  rotates half of each head and baichuan2-13b uses ALiBi; their presets are Llama-shaped
  with the same widths, depth, heads, KV heads and vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    arch: str  # transformers model_type
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    max_positions: int = 32768
    rope_theta: float = 10000.0
    qkv_bias: bool = False
    tie_embeddings: bool = False
    original: str = ""  # hub id of the model whose shape this is
    #: LoRA "DEFAULT" targets of the original family, as ms-swift defined them.
    default_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")

    def config(self):
        from transformers import AutoConfig

        kwargs = dict(hidden_size=self.hidden, num_hidden_layers=self.layers, num_attention_heads=self.heads,
                      num_key_value_heads=self.kv_heads, intermediate_size=self.ffn, vocab_size=self.vocab,
                      max_position_embeddings=self.max_positions, rope_theta=self.rope_theta,
                      tie_word_embeddings=self.tie_embeddings, rms_norm_eps=1e-6)
        if self.arch == "llama":
            kwargs["attention_bias"] = self.qkv_bias
        cfg = AutoConfig.for_model(self.arch, **kwargs)
        cfg.tunerkit_preset = self.name
        return cfg

    def num_params(self) -> int:
        """Analytic parameter count (embeddings, attention, SwiGLU MLP, norms, head)."""
        head_dim = self.hidden // self.heads
        kv = self.kv_heads * head_dim
        attn = self.hidden * self.hidden * 2 + self.hidden * kv * 2  # q, o, k, v
        if self.qkv_bias:
            attn += self.hidden + 2 * kv
            if self.arch == "llama":  # Llama's attention_bias also puts a bias on o_proj
                attn += self.hidden
        mlp = 3 * self.hidden * self.ffn
        norms = 2 * self.hidden
        embed = self.vocab * self.hidden
        head = 0 if self.tie_embeddings else self.vocab * self.hidden
        return self.layers * (attn + mlp + norms) + embed + head + self.hidden


_QWEN_DEFAULT = ("q_proj", "k_proj", "v_proj")  # qwen-1's fused c_attn, split

PRESETS: dict[str, Preset] = {p.name: p for p in [
    # Qwen (1.x) chat models, Qwen2-shaped
    Preset("qwen-1_8b-chat", "qwen2", 2048, 24, 16, 16, 5504, 151936, 8192, qkv_bias=True,
           original="Qwen/Qwen-1_8B-Chat", default_targets=_QWEN_DEFAULT),
    Preset("qwen-7b-chat", "qwen2", 4096, 32, 32, 32, 11008, 151936, 8192, qkv_bias=True,
           original="Qwen/Qwen-7B-Chat", default_targets=_QWEN_DEFAULT),
    Preset("qwen-14b-chat", "qwen2", 5120, 40, 40, 40, 13696, 152064, 8192, qkv_bias=True,
           original="Qwen/Qwen-14B-Chat", default_targets=_QWEN_DEFAULT),
    Preset("qwen-72b-chat", "qwen2", 8192, 80, 64, 64, 24576, 152064, 32768, qkv_bias=True,
           original="Qwen/Qwen-72B-Chat", default_targets=_QWEN_DEFAULT),
    Preset("qwen1half-7b-chat", "qwen2", 4096, 32, 32, 32, 11008, 151936, 32768, rope_theta=1e6,
           qkv_bias=True, original="Qwen/Qwen1.5-7B-Chat"),
    # ChatGLM3: multi-query attention with 2 KV groups
    Preset("chatglm3-6b", "llama", 4096, 28, 32, 2, 13696, 65024, 8192, qkv_bias=True,
           original="THUDM/chatglm3-6b"),
    Preset("chatglm3-6b-32k", "llama", 4096, 28, 32, 2, 13696, 65024, 32768, rope_theta=500000.0,
           qkv_bias=True, original="THUDM/chatglm3-6b-32k"),
    # Yi: Llama architecture with grouped-query attention
    Preset("yi-6b-chat", "llama", 4096, 32, 32, 4, 11008, 64000, 4096, rope_theta=5e6,
           original="01-ai/Yi-6B-Chat"),
    Preset("yi-34b-chat", "llama", 7168, 60, 56, 8, 20480, 64000, 4096, rope_theta=5e6,
           original="01-ai/Yi-34B-Chat"),
    # Mistral-7B shape (openbuddy extends Mistral's vocabulary; 32000 kept here)
    Preset("openbuddy-zephyr-7b-chat", "mistral", 4096, 32, 32, 8, 14336, 32000, 32768,
           original="OpenBuddy/openbuddy-zephyr-7b-v14.1"),
    # Baichuan2: fused W_pack in the original
    Preset("baichuan2-7b-chat", "llama", 4096, 32, 32, 32, 11008, 125696, 4096,
           original="baichuan-inc/Baichuan2-7B-Chat"),
    Preset("baichuan2-13b-chat", "llama", 5120, 40, 40, 40, 13696, 125696, 4096,
           original="baichuan-inc/Baichuan2-13B-Chat"),
    Preset("llama3-8b-instruct", "llama", 4096, 32, 32, 8, 14336, 128256, 8192, rope_theta=500000.0,
           original="meta-llama/Meta-Llama-3-8B-Instruct"),
    Preset("llama2-7b", "llama", 4096, 32, 32, 32, 11008, 32000, 4096, original="meta-llama/Llama-2-7b-hf"),
    # Tiny shapes for tests and smoke runs on CPU
    Preset("tiny-llama", "llama", 64, 4, 4, 2, 128, 49152, 2048, original="(test shape)"),
    Preset("tiny-qwen2", "qwen2", 64, 4, 4, 4, 128, 49152, 2048, qkv_bias=True, original="(test shape)"),
]}


def get_preset(name: str) -> Preset | None:
    return PRESETS.get(name)
