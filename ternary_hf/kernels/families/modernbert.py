"""ModernBERT encoder layers: pre-norm LayerNorm without bias (identity before the first layer's attention), one
fused Wqkv projection, rotary embeddings, global or sliding-window attention (the window comes in the mask
transformers builds per layer type), GeGLU feed-forward (`act(input) * gate` of one Wi projection)."""

from __future__ import annotations

from .spec import LayerInputs, LayerSpec, activation, norm, register


def _inputs(args: tuple, kwargs: dict) -> LayerInputs | None:
    mask = args[0] if args else kwargs.get("attention_mask")
    rope = args[1] if len(args) > 1 else kwargs.get("position_embeddings")
    if rope is None:
        return None
    return LayerInputs(mask=mask, rope=rope)


@register("ModernBertEncoderLayer")
def describe(layer) -> LayerSpec | None:
    attn, mlp = layer.attn, layer.mlp
    n1, n2, act = norm(layer.attn_norm), norm(layer.mlp_norm), activation(mlp.act)
    if n1 is False or n2 is None or n2 is False or act is None:
        return None
    heads = attn.config.num_attention_heads
    return LayerSpec(norm_first=True, attn_norm=n1, qkv=(attn.Wqkv,), heads=heads, kv_heads=heads,
                     head_dim=attn.head_dim, scaling=attn.head_dim ** -0.5, attn_out=attn.Wo, mlp_norm=n2,
                     mlp_in=(mlp.Wi,), activation=act, glu=True, mlp_out=mlp.Wo, inputs=_inputs, rope=True)
