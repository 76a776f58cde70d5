"""Eager PyTorch (what a user would write) for the same computations the addon runs, on CUDA: caption (CLIP ViT
image features -> ClipCap MLP mapper -> GPT-2 greedy decoding with a KV cache), one CE training step and one SCST
step. Loads a semicap Captioner folder (model.safetensors with clip_project.* and gpt.*, clip/ beside it).
Prints one JSON line. Usage: reference_cuda.py CAPTIONER_DIR PIXELS.safetensors OUT.json"""
import json, math, sys, time
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

dev = torch.device("cuda")
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
cap_dir, pixels_path, out_path = sys.argv[1:4]
W = {k: v.to(dev) for k, v in load_file(f"{cap_dir}/model.safetensors").items()}
C = {k: v.to(dev) for k, v in load_file(f"{cap_dir}/clip/model.safetensors").items()}
PIX = load_file(pixels_path)["pixels"].to(dev)


def ln(x, p, src):
    return F.layer_norm(x, (x.shape[-1],), src[p + ".weight"], src[p + ".bias"], 1e-5)


def clip_layer(x, p, heads, causal):
    h = ln(x, p + "layer_norm1", C)
    B, T, D = h.shape
    q, k, v = [F.linear(h, C[f"{p}self_attn.{m}.weight"], C[f"{p}self_attn.{m}.bias"]).view(B, T, heads, D // heads).transpose(1, 2) for m in ["q_proj", "k_proj", "v_proj"]]
    a = F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2).reshape(B, T, D)
    x = x + F.linear(a, C[p + "self_attn.out_proj.weight"], C[p + "self_attn.out_proj.bias"])
    h = F.linear(ln(x, p + "layer_norm2", C), C[p + "mlp.fc1.weight"], C[p + "mlp.fc1.bias"])
    h = h * torch.sigmoid(1.702 * h)
    return x + F.linear(h, C[p + "mlp.fc2.weight"], C[p + "mlp.fc2.bias"])


def image_features(px):
    x = F.conv2d(px, C["vision_model.embeddings.patch_embedding.weight"], stride=32).flatten(2).transpose(1, 2)
    cls = C["vision_model.embeddings.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + C["vision_model.embeddings.position_embedding.weight"]
    x = ln(x, "vision_model.pre_layrnorm", C)
    for i in range(12):
        x = clip_layer(x, f"vision_model.encoder.layers.{i}.", 12, False)
    return F.linear(ln(x[:, 0], "vision_model.post_layernorm", C), C["visual_projection.weight"])


def text_features(ids):
    x = C["text_model.embeddings.token_embedding.weight"][ids] + C["text_model.embeddings.position_embedding.weight"][: ids.shape[1]]
    for i in range(12):
        x = clip_layer(x, f"text_model.encoder.layers.{i}.", 8, True)
    x = ln(x, "text_model.final_layer_norm", C)
    return F.linear(x[torch.arange(ids.shape[0], device=dev), ids.argmax(-1)], C["text_projection.weight"])


def mapper(f, P):
    h = torch.tanh(F.linear(f, P["clip_project.model.0.weight"], P["clip_project.model.0.bias"]))
    return F.linear(h, P["clip_project.model.2.weight"], P["clip_project.model.2.bias"]).view(f.shape[0], 10, 768)


def gpt(x, P, cache=None):
    past = 0 if cache is None or not cache else cache[0][0].shape[2]
    x = x + P["gpt.wpe.weight"][past: past + x.shape[1]]
    new = []
    for i in range(12):
        p = f"gpt.h.{i}."
        h = ln(x, p + "ln_1", P)
        B, T, D = h.shape
        q, k, v = (torch.addmm(P[p + "attn.c_attn.bias"], h.view(-1, D), P[p + "attn.c_attn.weight"]).view(B, T, 3, 12, 64).permute(2, 0, 3, 1, 4))
        if cache:
            k = torch.cat([cache[i][0], k], 2)
            v = torch.cat([cache[i][1], v], 2)
        new.append((k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1).transpose(1, 2).reshape(B, T, D)
        x = x + (a @ P[p + "attn.c_proj.weight"] + P[p + "attn.c_proj.bias"])
        h = F.gelu(ln(x, p + "ln_2", P) @ P[p + "mlp.c_fc.weight"] + P[p + "mlp.c_fc.bias"], approximate="tanh")
        x = x + (h @ P[p + "mlp.c_proj.weight"] + P[p + "mlp.c_proj.bias"])
    return ln(x, "gpt.ln_f", P), new


def caption(px, tokens=20):
    prefix = mapper(image_features(px), W)
    h, cache = gpt(prefix, W, [])
    out = []
    tok = (h[:, -1] @ W["gpt.wte.weight"].t()).argmax(-1)
    for t in range(tokens):
        out.append(tok)
        if t + 1 == tokens:
            break
        h, cache = gpt(W["gpt.wte.weight"][tok].unsqueeze(1), W, cache)
        tok = (h[:, -1] @ W["gpt.wte.weight"].t()).argmax(-1)
    return torch.stack(out, 1)


def timed(fn, warmup=3, iters=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); fn(); e.record(); torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    times.sort()
    return times[len(times) // 2]


res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
with torch.inference_mode():
    res["greedy_ids_b8"] = caption(PIX[:8]).tolist()
    for B in [1, 8, 64]:
        px = PIX[:B] if B <= PIX.shape[0] else PIX.repeat(math.ceil(B / PIX.shape[0]), 1, 1, 1)[:B]
        res[f"caption_fp32_b{B}_ms"] = timed(lambda: caption(px))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            res[f"caption_bf16_b{B}_ms"] = timed(lambda: caption(px))

# Training steps: mapper + GPT-2 trainable (leaf copies), AdamW.
P = {k: v.clone().requires_grad_(True) for k, v in W.items()}
opt = torch.optim.AdamW(P.values(), lr=1e-5, weight_decay=0.01)
feats = torch.randn(8, 512, device=dev)
ids = torch.randint(0, 50257, (8, 20), device=dev)


def ce_step(bf16):
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        prefix = mapper(feats, P)
        x = torch.cat([prefix, P["gpt.wte.weight"][ids[:, :-1]]], 1)
        h, _ = gpt(x, P)
        logits = h[:, 9:] @ P["gpt.wte.weight"].t()
        loss = F.cross_entropy(logits.float().reshape(-1, 50257), ids.reshape(-1))
    loss.backward()
    opt.step(); opt.zero_grad(set_to_none=True)


def scst_step(bf16, K=5):
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        prefix = mapper(feats, P)
        def sample(pre, greedy):
            h, cache = gpt(pre, P, [])
            toks = []
            for t in range(20):
                logits = (h[:, -1] @ P["gpt.wte.weight"].t()).float()
                tok = logits.argmax(-1) if greedy else torch.multinomial(F.softmax(logits, -1), 1).squeeze(1)
                toks.append(tok)
                if t < 19:
                    h, cache = gpt(P["gpt.wte.weight"][tok].unsqueeze(1), P, cache)
            return torch.stack(toks, 1)
        g = sample(prefix, True)
        s = sample(prefix.repeat_interleave(K, 0), False)
        # CLIP rewards; ids mapped into CLIP's vocabulary by a fixed rule (the addon re-tokenises real text).
        clip_ids = torch.cat([g, s]) % 49407
        clip_ids[:, -1] = 49407
        tf = F.normalize(text_features(clip_ids), dim=-1)
        im = F.normalize(feats, dim=-1)
        r = 2.5 * (tf * torch.cat([im, im.repeat_interleave(K, 0)])).sum(-1).clamp_min(0)
        adv = r[8:] - r[:8].repeat_interleave(K)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        prefix = mapper(feats.repeat_interleave(K, 0), P)
        x = torch.cat([prefix, P["gpt.wte.weight"][s[:, :-1]]], 1)
        h, _ = gpt(x, P)
        logp = F.log_softmax((h[:, 9:] @ P["gpt.wte.weight"].t()).float(), -1).gather(-1, s.unsqueeze(-1)).squeeze(-1)
        loss = -(adv * logp.sum(1)).sum() / logp.numel()
    loss.backward()
    opt.step(); opt.zero_grad(set_to_none=True)


for bf16 in [False, True]:
    res[f"ce_step_{'bf16' if bf16 else 'fp32'}_ms"] = timed(lambda: ce_step(bf16), 2, 5)
    res[f"scst_step_{'bf16' if bf16 else 'fp32'}_ms"] = timed(lambda: scst_step(bf16), 1, 3)
json.dump(res, open(out_path, "w"), indent=1)
print(json.dumps({k: v for k, v in res.items() if not k.startswith("greedy")}))

# Ceilings for the floors: device copy bandwidth (bytes read + written) and matmul rates (no TF32 for fp32).
x = torch.empty(2**28, dtype=torch.float32, device=dev).normal_()
y = torch.empty_like(x)
ms = timed(lambda: y.copy_(x), 3, 10)
res["copy_gbs"] = 2 * x.numel() * 4 / (ms / 1e3) / 1e9
a = torch.randn(8192, 8192, device=dev)
b = torch.randn(8192, 8192, device=dev)
res["matmul_fp32_tflops"] = 2 * 8192**3 / (timed(lambda: a @ b, 2, 5) / 1e3) / 1e12
a16, b16 = a.bfloat16(), b.bfloat16()
res["matmul_bf16_tflops"] = 2 * 8192**3 / (timed(lambda: a16 @ b16, 2, 5) / 1e3) / 1e12
json.dump(res, open(out_path, "w"), indent=1)
print(json.dumps({k: res[k] for k in ["copy_gbs", "matmul_fp32_tflops", "matmul_bf16_tflops"]}))
