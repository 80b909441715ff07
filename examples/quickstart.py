"""Quick start: ternarize the bundled all-MiniLM-L6-v2 on load, save it packed, reload it, compare to fp32.

    HF_HUB_OFFLINE=1 python examples/quickstart.py [OUTPUT_DIR]
"""

import sys

import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel

import ternary_hf  # registers the "ternary" quantization method with transformers
from ternary_hf.defaults import default_model_path

out = sys.argv[1] if len(sys.argv) > 1 else "out/quickstart-minilm-ternary"
path = default_model_path()

# 1. transformers: quantize on load, save packed 2-bit safetensors, reload without passing a config
model = AutoModel.from_pretrained(path, quantization_config=ternary_hf.TernaryConfig())
model.save_pretrained(out + "-transformers")
reloaded = AutoModel.from_pretrained(out + "-transformers")
print(reloaded.encoder.layer[0].attention.self.query)      # TernaryLinear(..., granularity=per_channel, rule=twn)
print(ternary_hf.footprint(out + "-transformers"))           # bytes per component, ratio to fp32

# 2. sentence-transformers: the same, through model_kwargs
fp = SentenceTransformer(path, device="cpu")
st = SentenceTransformer(path, device="cpu", model_kwargs={"quantization_config": ternary_hf.TernaryConfig()})
st.save(out)
st = SentenceTransformer(out, device="cpu")                  # reloads as ternary
texts = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today."]
with torch.inference_mode():
    sim_fp = fp.similarity(fp.encode(texts), fp.encode(texts))
    sim_t = st.similarity(st.encode(texts), st.encode(texts))
print("cosine similarities, fp32:\n", sim_fp, "\nternary (post-training, before distillation):\n", sim_t)
