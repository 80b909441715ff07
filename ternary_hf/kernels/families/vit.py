"""ViT (and DeiT-style) encoder layers: pre-norm LayerNorm, separate query/key/value, GELU MLP, no mask."""

from __future__ import annotations

from .spec import LayerInputs, LayerSpec, activation, norm, register


def _inputs(args: tuple, kwargs: dict) -> LayerInputs | None:
    mask = args[0] if args else kwargs.get("attention_mask")
    return LayerInputs(mask=mask)


@register("ViTLayer")
def describe(layer) -> LayerSpec | None:
    sa, mlp = layer.attention, layer.mlp
    n1, n2, act = norm(layer.layernorm_before), norm(layer.layernorm_after), activation(mlp.activation_fn)
    if n1 is False or n2 is False or act is None:
        return None
    return LayerSpec(norm_first=True, attn_norm=n1, qkv=(sa.q_proj, sa.k_proj, sa.v_proj),
                     heads=sa.num_attention_heads, kv_heads=sa.num_attention_heads, head_dim=sa.head_dim,
                     scaling=float(sa.scaling), attn_out=sa.o_proj, mlp_norm=n2, mlp_in=(mlp.fc1,), activation=act, glu=False,
                     mlp_out=mlp.fc2, inputs=_inputs)
