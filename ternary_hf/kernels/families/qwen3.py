"""Qwen3 decoder layers (used as embedders with last-token pooling): pre-norm RMSNorm, grouped-query attention
with per-head RMSNorm on queries and keys, rotary embeddings, causal mask, SwiGLU feed-forward
(`silu(gate_proj(x)) * up_proj(x)`). A first forward fills the KV cache transformers hands it; continuing from a cache (generation) is left to
the layer's own forward."""

from __future__ import annotations

from .spec import LayerInputs, LayerSpec, activation, norm, register


def _inputs_of(layer_idx: int):
    def inputs(args: tuple, kwargs: dict) -> LayerInputs | None:
        mask = args[0] if args else kwargs.get("attention_mask")
        rope = kwargs.get("position_embeddings")
        cache = kwargs.get("past_key_values")
        if rope is None or len(args) > 1:
            return None
        if cache is not None:  # the model's default for one forward: an empty cache this call fills
            if cache.get_seq_length(layer_idx) != 0:
                return None  # extending earlier tokens (generation): the layer's own forward
            return LayerInputs(mask=mask, rope=rope, cache=(cache, layer_idx))
        return LayerInputs(mask=mask, rope=rope)

    return inputs


@register("Qwen3DecoderLayer")
def describe(layer) -> LayerSpec | None:
    attn, mlp = layer.self_attn, layer.mlp
    if getattr(attn, "sliding_window", None):
        return None  # a window the mask would have to carry: not covered yet
    n1, n2 = norm(layer.input_layernorm), norm(layer.post_attention_layernorm)
    qn, kn, act = norm(attn.q_norm), norm(attn.k_norm), activation(mlp.act_fn)
    if not (n1 and n2 and qn and kn) or act is None:
        return None
    cfg = attn.config
    return LayerSpec(norm_first=True, attn_norm=n1, qkv=(attn.q_proj, attn.k_proj, attn.v_proj),
                     heads=cfg.num_attention_heads, kv_heads=cfg.num_key_value_heads, head_dim=attn.head_dim,
                     scaling=float(attn.scaling), attn_out=attn.o_proj, mlp_norm=n2,
                     mlp_in=(mlp.gate_proj, mlp.up_proj), activation=act, glu=True, mlp_out=mlp.down_proj,
                     inputs=_inputs_of(attn.layer_idx), causal=True, rope=True, q_norm=qn, k_norm=kn)
