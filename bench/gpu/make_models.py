"""Random-weight Hugging Face folders with ViT-B/32 CLIP and GPT-2 124M shapes (exact HF key names), written with
the safetensors package on the GPU machine (nothing that large travels). Usage: make_models.py OUT_DIR"""
import json, os, sys
import torch
from safetensors.torch import save_file

out = sys.argv[1]
g = torch.Generator().manual_seed(1234)


def rnd(*shape, std=0.02):
    return (torch.randn(*shape, generator=g) * std).contiguous()


def ln(prefix, d, t):
    t[prefix + ".weight"] = 1 + rnd(d)
    t[prefix + ".bias"] = rnd(d, std=0.01)


def clip_layers(prefix, n, d, mlp, t):
    for i in range(n):
        p = f"{prefix}.encoder.layers.{i}."
        for m in ["q_proj", "k_proj", "v_proj", "out_proj"]:
            t[p + f"self_attn.{m}.weight"] = rnd(d, d)
            t[p + f"self_attn.{m}.bias"] = rnd(d, std=0.01)
        ln(p + "layer_norm1", d, t)
        ln(p + "layer_norm2", d, t)
        t[p + "mlp.fc1.weight"] = rnd(mlp, d)
        t[p + "mlp.fc1.bias"] = rnd(mlp, std=0.01)
        t[p + "mlp.fc2.weight"] = rnd(d, mlp)
        t[p + "mlp.fc2.bias"] = rnd(d, std=0.01)


t = {}
t["vision_model.embeddings.patch_embedding.weight"] = rnd(768, 3, 32, 32)
t["vision_model.embeddings.class_embedding"] = rnd(768)
t["vision_model.embeddings.position_embedding.weight"] = rnd(50, 768)
ln("vision_model.pre_layrnorm", 768, t)
clip_layers("vision_model", 12, 768, 3072, t)
ln("vision_model.post_layernorm", 768, t)
t["visual_projection.weight"] = rnd(512, 768)
t["text_model.embeddings.token_embedding.weight"] = rnd(49408, 512)
t["text_model.embeddings.position_embedding.weight"] = rnd(77, 512, std=0.01)
clip_layers("text_model", 12, 512, 2048, t)
ln("text_model.final_layer_norm", 512, t)
t["text_projection.weight"] = rnd(512, 512)
t["logit_scale"] = torch.tensor(2.6592)
os.makedirs(f"{out}/clip", exist_ok=True)
save_file(t, f"{out}/clip/model.safetensors", metadata={"format": "pt"})
json.dump({"model_type": "clip", "projection_dim": 512, "logit_scale_init_value": 2.6592,
           "text_config": {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8, "num_hidden_layers": 12,
                           "vocab_size": 49408, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "eos_token_id": 2},
           "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
                             "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu"}}, open(f"{out}/clip/config.json", "w"))

t = {}
t["wte.weight"] = rnd(50257, 768)
t["wpe.weight"] = rnd(1024, 768, std=0.01)
for i in range(12):
    p = f"h.{i}."
    ln(p + "ln_1", 768, t)
    ln(p + "ln_2", 768, t)
    t[p + "attn.c_attn.weight"] = rnd(768, 2304)
    t[p + "attn.c_attn.bias"] = rnd(2304, std=0.01)
    t[p + "attn.c_proj.weight"] = rnd(768, 768)
    t[p + "attn.c_proj.bias"] = rnd(768, std=0.01)
    t[p + "mlp.c_fc.weight"] = rnd(768, 3072)
    t[p + "mlp.c_fc.bias"] = rnd(3072, std=0.01)
    t[p + "mlp.c_proj.weight"] = rnd(3072, 768)
    t[p + "mlp.c_proj.bias"] = rnd(768, std=0.01)
ln("ln_f", 768, t)
os.makedirs(f"{out}/gpt2", exist_ok=True)
save_file(t, f"{out}/gpt2/model.safetensors", metadata={"format": "pt"})
json.dump({"model_type": "gpt2", "n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024, "vocab_size": 50257,
           "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "eos_token_id": 50256, "bos_token_id": 50256},
          open(f"{out}/gpt2/config.json", "w"))
print("models written to", out)
