"""MPNet layers (all-mpnet-base-v2): BERT's post-norm layer with a relative-position bias added to the attention
scores (computed once per forward by the encoder and passed to every layer)."""

from __future__ import annotations

from .spec import LayerInputs, LayerSpec, activation, norm, register


def _inputs(args: tuple, kwargs: dict) -> LayerInputs | None:
    mask = args[0] if args else kwargs.get("attention_mask")
    bias = args[1] if len(args) > 1 else kwargs.get("position_bias")
    if kwargs.get("output_attentions") or (len(args) > 2 and args[2]):
        return None
    return LayerInputs(mask=mask, bias=bias)


@register("MPNetLayer")
def describe(layer) -> LayerSpec | None:
    sa = layer.attention.attn
    n1, n2 = norm(layer.attention.LayerNorm), norm(layer.output.LayerNorm)
    act = activation(layer.intermediate.intermediate_act_fn)
    if not n1 or not n2 or act is None:
        return None
    return LayerSpec(norm_first=False, attn_norm=n1, qkv=(sa.q, sa.k, sa.v), heads=sa.num_attention_heads,
                     kv_heads=sa.num_attention_heads, head_dim=sa.attention_head_size,
                     scaling=sa.attention_head_size ** -0.5, attn_out=sa.o, mlp_norm=n2,
                     mlp_in=(layer.intermediate.dense,), activation=act, glu=False, mlp_out=layer.output.dense,
                     inputs=_inputs, returns_tuple=True)
