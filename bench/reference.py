#!/usr/bin/env python3
"""Eager PyTorch reference for the semicap benchmark (float32, CPU).

Implements the same computation as the semicap addon with plain torch / torch.nn.functional ops,
following Hugging Face semantics (CLIPModel.get_image_features, GPT2LMHeadModel) and the ClipCap MLP
mapper, loading the checkpoints written by bench/make-models.ts (or real HF folders with the same
layout) through a hand-written safetensors reader.

Tasks (--task):
  caption   pixels [B,3,224,224] -> CLIP image features -> mapper -> prefix [B,P,768] -> GPT-2 greedy
            decoding of exactly --tokens new tokens with a KV cache (one forward over the P prefix
            embeddings, then one token per forward; argmax, no stop token), in inference_mode.
  features  CLIP image features only.
  ce-step   one training step: cached CLIP features [B,512] -> mapper -> prefix; GPT-2 over
            prefix + token ids [B,T] (the last id is only a target: P+T-1 positions); cross-entropy of logits at positions P-1..P+T-2 against the T
            tokens; backward; AdamW(lr=1e-5, weight_decay=0.01) step over mapper + GPT-2; zero_grad.
  scst-step one CLIP-reward (SCST) step as the addon's clip-reward stage runs it: no grad: mapper ->
            greedy decoding (baseline) of B rows and multinomial sampling of B*K rows (--samples K), --tokens
            tokens each; the B*(K+1) captions through CLIP's text tower (causal, 8 heads) -> CLIP-S reward
            2.5*max(cos,0) against the image features; advantage = sample reward - greedy reward of its image;
            with grad: mapper + GPT-2 over prefix + sampled ids, log-probabilities of the sampled ids,
            loss = -sum(adv * sum_t logp) / (B*K*T); backward; AdamW step; zero_grad.
            GPT-2 ids are mapped into CLIP's vocabulary by a fixed rule (the addon decodes them to text and
            re-tokenises it with CLIP's BPE): row = [49406] + (ids tiled to --clip-len - 2 columns) % 49406
            + [49407], so the text tower sees --clip-len tokens per caption, pooled at the end token.

Weights: --models DIR (clip/, gpt2/, mapper.safetensors as written by make-models.ts) or --captioner DIR (a
folder written by the addon's Captioner.save(): model.safetensors with clip_project.model.{0,2}.* (the mapper)
and gpt.* (GPT-2), config.json with the gpt2 config and semicap.mapper, clip/ with CLIP).

Prints one JSON line on stdout:
  {"task", "batch", "threads", "iters", "mean_ms", "median_ms", "min_ms", "samples_ms", "load_ms", ...}

Run with Debian's interpreter (the one with torch):  /usr/bin/python3 bench/reference.py --help
"""

import argparse
import json
import math
import os
import statistics
import struct
import sys
import time

import torch
import torch.nn.functional as F

# ------------------------------------------------------------------------------------------------
# safetensors

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def load_safetensors(path):
    """Reads a .safetensors file into one bytearray (the only copy) and returns
    ({name: tensor viewing that buffer}, metadata). Tensors are writable (training updates them)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        buf = bytearray(size)
        mv = memoryview(buf)
        got = 0
        while got < size:
            n = f.readinto(mv[got:])
            if not n:
                raise IOError(f"{path}: short read")
            got += n
        del mv
    if size < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (hlen,) = struct.unpack_from("<Q", buf, 0)
    if 8 + hlen > size:
        raise ValueError(f"{path}: header length {hlen} exceeds file size {size}")
    header = json.loads(bytes(buf[8:8 + hlen]).decode("utf-8"))
    meta = header.pop("__metadata__", None) or {}
    base = 8 + hlen
    out = {}
    for name, e in header.items():
        dt = _DTYPES[e["dtype"]]
        shape = [int(s) for s in e["shape"]]
        begin, end = (int(x) for x in e["data_offsets"])
        count = math.prod(shape)
        itemsize = torch.empty((), dtype=dt).element_size()
        if end - begin != count * itemsize or base + end > size:
            raise ValueError(f"{path}: tensor {name}: bad data_offsets {begin},{end} for shape {shape} {e['dtype']}")
        if count == 0:
            t = torch.empty(shape, dtype=dt)
        else:
            t = torch.frombuffer(buf, dtype=dt, count=count, offset=base + begin).view(shape)
        out[name] = t
    return out, meta


# ------------------------------------------------------------------------------------------------
# models (functional, HF semantics)


def _ln(x, sd, prefix, eps):
    return F.layer_norm(x, (x.shape[-1],), sd[prefix + ".weight"], sd[prefix + ".bias"], eps)


def _act(name):
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")  # == HF NewGELU 0.5x(1+tanh(sqrt(2/pi)(x+0.044715x^3)))
    raise ValueError(f"unsupported activation {name}")


def _clip_layer(x, sd, lp, heads, eps, act, mask=None):
    """One pre-LN CLIP encoder layer (both towers; the text tower passes its causal mask)."""
    B, n, d = x.shape
    hd = d // heads
    h = _ln(x, sd, lp + "layer_norm1", eps)
    q = F.linear(h, sd[lp + "self_attn.q_proj.weight"], sd[lp + "self_attn.q_proj.bias"]) * hd ** -0.5
    k = F.linear(h, sd[lp + "self_attn.k_proj.weight"], sd[lp + "self_attn.k_proj.bias"])
    v = F.linear(h, sd[lp + "self_attn.v_proj.weight"], sd[lp + "self_attn.v_proj.bias"])
    q, k, v = (t.view(B, n, heads, hd).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2)
    w = torch.softmax(scores if mask is None else scores + mask, dim=-1)
    a = (w @ v).transpose(1, 2).reshape(B, n, d)
    x = x + F.linear(a, sd[lp + "self_attn.out_proj.weight"], sd[lp + "self_attn.out_proj.bias"])
    h = act(F.linear(_ln(x, sd, lp + "layer_norm2", eps), sd[lp + "mlp.fc1.weight"], sd[lp + "mlp.fc1.bias"]))
    return x + F.linear(h, sd[lp + "mlp.fc2.weight"], sd[lp + "mlp.fc2.bias"])


class ClipVision:
    """CLIPModel.get_image_features: conv patch embedding (no bias), class token, learned positions,
    pre_layrnorm, pre-LN encoder (quick_gelu MLP), post_layernorm on the class token,
    visual_projection (no bias). Output is NOT normalised."""

    def __init__(self, sd, cfg):
        vc = cfg["vision_config"]
        self.d = vc["hidden_size"]
        self.heads = vc["num_attention_heads"]
        self.layers = vc["num_hidden_layers"]
        self.patch = vc["patch_size"]
        self.image = vc["image_size"]
        self.eps = vc.get("layer_norm_eps", 1e-5)
        self.act = _act(vc.get("hidden_act", "quick_gelu"))
        self.sd = sd
        self.proj = sd["visual_projection.weight"]
        self.out_dim = self.proj.shape[0]

    def __call__(self, pixels):
        sd, d, eps = self.sd, self.d, self.eps
        p = "vision_model."
        B = pixels.shape[0]
        x = F.conv2d(pixels, sd[p + "embeddings.patch_embedding.weight"], stride=self.patch)  # [B,d,g,g]
        x = x.flatten(2).transpose(1, 2)  # [B,g*g,d]
        cls = sd[p + "embeddings.class_embedding"].expand(B, 1, d)
        x = torch.cat([cls, x], dim=1) + sd[p + "embeddings.position_embedding.weight"]
        x = _ln(x, sd, p + "pre_layrnorm", eps)
        for i in range(self.layers):
            x = _clip_layer(x, sd, f"{p}encoder.layers.{i}.", self.heads, eps, self.act)
        pooled = _ln(x[:, 0, :], sd, p + "post_layernorm", eps)
        return F.linear(pooled, self.proj)


class ClipText:
    """CLIPModel.get_text_features: token + position embeddings, pre-LN causal encoder (quick_gelu MLP),
    final_layer_norm, pooled at argmax(ids) (legacy eos_token_id 2) or the first eos, text_projection."""

    def __init__(self, sd, cfg):
        tc = cfg["text_config"]
        self.d = tc["hidden_size"]
        self.heads = tc["num_attention_heads"]
        self.layers = tc["num_hidden_layers"]
        self.eps = tc.get("layer_norm_eps", 1e-5)
        self.eos = tc.get("eos_token_id", 2)
        self.act = _act(tc.get("hidden_act", "quick_gelu"))
        self.sd = sd

    def __call__(self, ids):
        sd, eps = self.sd, self.eps
        p = "text_model."
        B, n = ids.shape
        x = F.embedding(ids, sd[p + "embeddings.token_embedding.weight"]) + sd[p + "embeddings.position_embedding.weight"][:n]
        mask = torch.full((n, n), torch.finfo(x.dtype).min).triu(1)
        for i in range(self.layers):
            x = _clip_layer(x, sd, f"{p}encoder.layers.{i}.", self.heads, eps, self.act, mask)
        x = _ln(x, sd, p + "final_layer_norm", eps)
        pos = ids.argmax(1) if self.eos == 2 else (ids == self.eos).int().argmax(1)
        return F.linear(x[torch.arange(B), pos], sd["text_projection.weight"])


class Mapper:
    """ClipCap MLP: Linear(clip -> gpt*P/2), Tanh, Linear(-> gpt*P), viewed as [B, P, gpt]."""

    def __init__(self, sd, gpt_dim):
        self.sd = sd
        self.gpt_dim = gpt_dim
        out = sd["mapper.2.weight"].shape[0]
        if out % gpt_dim:
            raise ValueError(f"mapper output {out} is not a multiple of the GPT-2 width {gpt_dim}")
        self.prefix = out // gpt_dim
        self.in_dim = sd["mapper.0.weight"].shape[1]

    def params(self):
        return [self.sd[k] for k in ("mapper.0.weight", "mapper.0.bias", "mapper.2.weight", "mapper.2.bias")]

    def __call__(self, feats):
        sd = self.sd
        h = torch.tanh(F.linear(feats, sd["mapper.0.weight"], sd["mapper.0.bias"]))
        h = F.linear(h, sd["mapper.2.weight"], sd["mapper.2.bias"])
        return h.view(feats.shape[0], self.prefix, self.gpt_dim)


def _conv1d(x, w, b):
    # transformers.pytorch_utils.Conv1D: weight [in, out]
    return torch.addmm(b, x.reshape(-1, x.shape[-1]), w).view(*x.shape[:-1], w.shape[1])


class GPT2:
    """GPT2LMHeadModel semantics: learned positions, pre-LN blocks, Conv1D projections, gelu_new,
    causal attention scaled by 1/sqrt(head_dim), ln_f, lm_head tied to wte."""

    def __init__(self, sd, cfg):
        self.sd = sd
        self.d = cfg["n_embd"]
        self.heads = cfg["n_head"]
        self.layers = cfg["n_layer"]
        self.eps = cfg.get("layer_norm_epsilon", 1e-5)
        self.act = _act(cfg.get("activation_function", "gelu_new"))
        self.wte = sd["wte.weight"]
        self.wpe = sd["wpe.weight"]
        self.vocab = self.wte.shape[0]
        self.n_positions = self.wpe.shape[0]
        self.use_sdpa = hasattr(F, "scaled_dot_product_attention")

    def params(self):
        names = ["wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"]
        for i in range(self.layers):
            for m in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
                names += [f"h.{i}.{m}.weight", f"h.{i}.{m}.bias"]
        return [self.sd[n] for n in names]

    def _attn(self, q, k, v):
        # q [B,H,T,hd], k/v [B,H,S,hd]; query t sits at absolute position S-T+t.
        T, S = q.shape[-2], k.shape[-2]
        if self.use_sdpa:
            if T == 1:
                return F.scaled_dot_product_attention(q, k, v)
            if T == S:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            mask = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        w = (q @ k.transpose(-1, -2)) / math.sqrt(v.shape[-1])
        if T > 1:
            mask = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)
            w = torch.where(mask, w, torch.tensor(torch.finfo(w.dtype).min, dtype=w.dtype))
        return torch.softmax(w, dim=-1) @ v

    def forward(self, x, past=None):
        """x: input embeddings [B,T,d] with position embeddings already added. Returns (ln_f(h), presents)."""
        sd, d, eps, H = self.sd, self.d, self.eps, self.heads
        B, T, _ = x.shape
        hd = d // H
        presents = []
        h = x
        for i in range(self.layers):
            lp = f"h.{i}."
            a = _ln(h, sd, lp + "ln_1", eps)
            qkv = _conv1d(a, sd[lp + "attn.c_attn.weight"], sd[lp + "attn.c_attn.bias"])
            q, k, v = qkv.split(d, dim=2)
            q = q.view(B, T, H, hd).transpose(1, 2)
            k = k.view(B, T, H, hd).transpose(1, 2)
            v = v.view(B, T, H, hd).transpose(1, 2)
            if past is not None:
                pk, pv = past[i]
                k = torch.cat([pk, k], dim=-2)
                v = torch.cat([pv, v], dim=-2)
            presents.append((k, v))
            a = self._attn(q, k, v).transpose(1, 2).reshape(B, T, d)
            a = _conv1d(a, sd[lp + "attn.c_proj.weight"], sd[lp + "attn.c_proj.bias"])
            h = h + a
            m = _ln(h, sd, lp + "ln_2", eps)
            m = self.act(_conv1d(m, sd[lp + "mlp.c_fc.weight"], sd[lp + "mlp.c_fc.bias"]))
            m = _conv1d(m, sd[lp + "mlp.c_proj.weight"], sd[lp + "mlp.c_proj.bias"])
            h = h + m
        return _ln(h, sd, "ln_f", eps), presents

    def logits(self, h):
        return F.linear(h, self.wte)


# ------------------------------------------------------------------------------------------------
# tasks


def greedy_caption(clip, mapper, gpt, pixels, tokens):
    """Returns (ids [B,tokens] int64, features [B,proj])."""
    feats = clip(pixels)
    prefix = mapper(feats)  # [B,P,d]
    P = prefix.shape[1]
    if P + tokens - 1 > gpt.n_positions:
        raise ValueError("prefix + tokens exceed n_positions")
    h, past = gpt.forward(prefix + gpt.wpe[:P])
    tok = gpt.logits(h[:, -1, :]).argmax(dim=-1)
    ids = [tok]
    for s in range(1, tokens):
        x = (F.embedding(tok, gpt.wte) + gpt.wpe[P + s - 1]).unsqueeze(1)  # token s-1 at position P+s-1
        h, past = gpt.forward(x, past)
        tok = gpt.logits(h[:, -1, :]).argmax(dim=-1)
        ids.append(tok)
    return torch.stack(ids, dim=1), feats


def greedy_no_cache(mapper, gpt, feats, tokens):
    """Self-check: same greedy decoding recomputing the whole sequence each step (no KV cache)."""
    prefix = mapper(feats)
    P = prefix.shape[1]
    x = prefix
    ids = []
    for s in range(tokens):
        h, _ = gpt.forward(x + gpt.wpe[: x.shape[1]])
        tok = gpt.logits(h[:, -1, :]).argmax(dim=-1)
        ids.append(tok)
        x = torch.cat([x, F.embedding(tok, gpt.wte).unsqueeze(1)], dim=1)
    return torch.stack(ids, dim=1)


def decode_ids(mapper_prefix, gpt, tokens, sample, generator=None, temperature=1.0):
    """Greedy (sample=False) or multinomial sampling of exactly `tokens` ids after a prefix [B,P,d], KV cache."""
    P = mapper_prefix.shape[1]
    h, past = gpt.forward(mapper_prefix + gpt.wpe[:P])
    ids = []
    for s in range(tokens):
        logits = gpt.logits(h[:, -1, :])
        if sample:
            tok = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator).squeeze(1)
        else:
            tok = logits.argmax(dim=-1)
        ids.append(tok)
        if s + 1 < tokens:
            x = (F.embedding(tok, gpt.wte) + gpt.wpe[P + s]).unsqueeze(1)
            h, past = gpt.forward(x, past)
    return torch.stack(ids, dim=1)


def to_clip_ids(ids, clip_len):
    """The fixed GPT-2 -> CLIP id rule: [sot] + ids tiled to clip_len - 2 columns, mod 49406, + [eot]."""
    B, T = ids.shape
    body = ids.repeat(1, (clip_len - 2 + T - 1) // T)[:, : clip_len - 2] % 49406
    sot = torch.full((B, 1), 49406, dtype=torch.long)
    eot = torch.full((B, 1), 49407, dtype=torch.long)
    return torch.cat([sot, body, eot], dim=1)


def teacher_forced_logits(mapper, gpt, feats, ids):
    """Logits for every id: position P-1+t of the prefix + ids sequence predicts ids[:, t]: [B,T,V]."""
    prefix = mapper(feats)
    P = prefix.shape[1]
    T = ids.shape[1]
    # The last token is only a target: the model reads prefix + ids[:, :T-1] (P+T-1 positions, as the addon);
    # the loss is the same as over P+T positions (causal attention: later positions do not change earlier ones).
    x = torch.cat([prefix, F.embedding(ids[:, :-1], gpt.wte)], dim=1) + gpt.wpe[: P + T - 1]
    h, _ = gpt.forward(x)
    return gpt.logits(h[:, P - 1 :, :])


def seq_logprobs(mapper, gpt, feats, ids):
    """log p(ids[:, t] | prefix, ids[:, :t]) for every t: [B,T]."""
    logits = teacher_forced_logits(mapper, gpt, feats, ids)
    return torch.log_softmax(logits, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def ce_loss(mapper, gpt, feats, ids):
    logits = teacher_forced_logits(mapper, gpt, feats, ids)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1))


# ------------------------------------------------------------------------------------------------
# inputs


def _read_raw(path, dtype, shape):
    n = math.prod(shape)
    item = torch.empty((), dtype=dtype).element_size()
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if len(data) != n * item:
        raise ValueError(f"{path}: {len(data)} bytes, expected {n * item} for {dtype} {list(shape)}")
    return torch.frombuffer(data, dtype=dtype).view(shape).clone()


def _write_raw(path, t):
    t = t.contiguous()
    with open(path, "wb") as f:
        f.write(t.numpy().tobytes() if t.dtype != torch.bfloat16 else bytes(t.view(torch.int16).numpy().tobytes()))


def _load_models(models_dir, need_clip, need_gpt, need_text=False, captioner=None):
    """Returns (clip vision, mapper, gpt, clip text); from --models or from a Captioner.save() folder."""
    root = captioner or models_dir
    if captioner:
        with open(os.path.join(captioner, "config.json")) as f:
            cfg = json.load(f)
        gcfg = cfg["gpt2"]
        clip_dir = os.path.join(captioner, cfg.get("semicap", {}).get("clip", "clip"))
    else:
        with open(os.path.join(models_dir, "gpt2", "config.json")) as f:
            gcfg = json.load(f)
        clip_dir = os.path.join(models_dir, "clip")
    clip = gpt = text = None
    if need_clip or need_text:
        with open(os.path.join(clip_dir, "config.json")) as f:
            ccfg = json.load(f)
        csd, _ = load_safetensors(os.path.join(clip_dir, "model.safetensors"))
        if need_clip:
            clip = ClipVision(csd, ccfg)
        if need_text:
            text = ClipText(csd, ccfg)
    if captioner:
        sd, _ = load_safetensors(os.path.join(root, "model.safetensors"))
        msd = {"mapper." + k[len("clip_project.model."):]: v for k, v in sd.items() if k.startswith("clip_project.model.")}
        if need_gpt:
            gpt = GPT2({k[len("gpt."):]: v for k, v in sd.items() if k.startswith("gpt.")}, gcfg)
    else:
        if need_gpt:
            gsd, _ = load_safetensors(os.path.join(models_dir, "gpt2", "model.safetensors"))
            gpt = GPT2(gsd, gcfg)
        msd, _ = load_safetensors(os.path.join(models_dir, "mapper.safetensors"))
    mapper = Mapper(msd, gcfg["n_embd"])
    return clip, mapper, gpt, text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="folder with clip/, gpt2/, mapper.safetensors")
    ap.add_argument("--captioner", help="a Captioner.save() folder (mapper + GPT-2 in model.safetensors, clip/) instead of --models")
    ap.add_argument("--task", required=True, choices=["caption", "ce-step", "features", "scst-step"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=20, help="new tokens (caption) / caption length (ce-step)")
    ap.add_argument("--prefix", type=int, default=10, help="prefix length; must match the mapper")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    ap.add_argument("--seed", type=int, default=0, help="seed for generated inputs")
    ap.add_argument("--pixels", help="raw little-endian float32 [B,3,S,S] input images (caption/features)")
    ap.add_argument("--save-pixels", help="write the pixels used as raw float32")
    ap.add_argument("--features", help="raw float32 [B,clip_dim] cached CLIP features (ce-step)")
    ap.add_argument("--save-features", help="write the ce-step features used as raw float32")
    ap.add_argument("--ids", help="raw little-endian int32 [B,tokens] token ids (ce-step)")
    ap.add_argument("--save-ids", help="write the ce-step token ids used as raw int32")
    ap.add_argument("--check-out", help="write outputs as JSON for a cross-check against the addon")
    ap.add_argument("--self-check", action="store_true", help="caption: also decode without KV cache and compare")
    ap.add_argument("--profile", action="store_true", help="caption: also time CLIP alone and decoding from features alone")
    ap.add_argument("--samples", type=int, default=5, help="scst-step: samples per image")
    ap.add_argument("--clip-len", type=int, default=24, help="scst-step: CLIP text tokens per caption (incl. sot/eot)")
    ap.add_argument("--grad-clip", type=float, default=0.0,
                    help="ce-step/scst-step: clip_grad_norm_ to this before AdamW (0: off; the addon's default is 1)")
    args = ap.parse_args(argv)
    if not args.models and not args.captioner:
        ap.error("give --models or --captioner")

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.batch < 1 or args.tokens < 1 or args.iters < 1 or args.warmup < 0:
        ap.error("batch, tokens, iters must be >= 1 and warmup >= 0")

    t0 = time.perf_counter()
    need_clip = args.task in ("caption", "features")
    need_gpt = args.task in ("caption", "ce-step", "scst-step")
    need_text = args.task == "scst-step"
    clip, mapper, gpt, text = _load_models(args.models, need_clip, need_gpt, need_text, args.captioner)
    if mapper.prefix != args.prefix:
        ap.error(f"--prefix {args.prefix} but the mapper produces a prefix of {mapper.prefix}")
    load_ms = (time.perf_counter() - t0) * 1e3

    g = torch.Generator().manual_seed(args.seed)
    B = args.batch
    check = {"task": args.task, "batch": B}
    extra = {}

    if need_clip:
        shape = (B, 3, clip.image, clip.image)
        pixels = _read_raw(args.pixels, torch.float32, shape) if args.pixels else torch.randn(shape, generator=g)
        if args.save_pixels:
            _write_raw(args.save_pixels, pixels)

    if args.task == "features":
        def run():
            with torch.inference_mode():
                return clip(pixels)

    elif args.task == "caption":
        def run():
            with torch.inference_mode():
                return greedy_caption(clip, mapper, gpt, pixels, args.tokens)

    else:  # ce-step, scst-step
        feats = (_read_raw(args.features, torch.float32, (B, mapper.in_dim)) if args.features
                 else torch.randn((B, mapper.in_dim), generator=g))
        ids = (_read_raw(args.ids, torch.int32, (B, args.tokens)).long() if args.ids
               else torch.randint(0, gpt.vocab, (B, args.tokens), generator=g))
        if args.save_features:
            _write_raw(args.save_features, feats)
        if args.save_ids:
            _write_raw(args.save_ids, ids.int())
        t1 = time.perf_counter()
        params = mapper.params() + gpt.params()
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01)
        load_ms += (time.perf_counter() - t1) * 1e3
        extra["trainable_params"] = sum(p.numel() for p in params)
        extra["grad_clip"] = args.grad_clip
        losses = []
        phases = {}

        def mark(name, t):
            now = time.perf_counter()
            phases.setdefault(name, []).append((now - t) * 1e3)
            return now

        def finish(loss, t):
            loss.backward()
            t = mark("backward", t)
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
            opt.step()
            opt.zero_grad()
            mark("optimizer", t)
            losses.append(loss.item())
            return loss

        if args.task == "ce-step":
            def run():
                t = time.perf_counter()
                loss = ce_loss(mapper, gpt, feats, ids)
                t = mark("forward", t)
                return finish(loss, t)
        else:
            K, T = args.samples, args.tokens
            extra["samples"] = K
            extra["clip_len"] = args.clip_len
            sg = torch.Generator().manual_seed(args.seed + 1)
            rewards = []

            def run():
                t = time.perf_counter()
                with torch.no_grad():
                    prefix = mapper(feats)
                    greedy = decode_ids(prefix, gpt, T, sample=False)
                    t = mark("decode_greedy", t)
                    sampled = decode_ids(prefix.repeat_interleave(K, 0), gpt, T, sample=True, generator=sg)
                    t = mark("decode_sample", t)
                    tf = F.normalize(text(to_clip_ids(torch.cat([greedy, sampled]), args.clip_len)), dim=-1)
                    im = F.normalize(feats, dim=-1)
                    r = 2.5 * (tf * torch.cat([im, im.repeat_interleave(K, 0)])).sum(-1).clamp_min(0)
                    adv = r[B:] - r[:B].repeat_interleave(K)
                    rewards.append(r[B:].mean().item())
                    t = mark("reward", t)
                logp = seq_logprobs(mapper, gpt, feats.repeat_interleave(K, 0), sampled)
                loss = -(adv * logp.sum(1)).sum() / logp.numel()
                t = mark("forward", t)
                return finish(loss, t)

    samples = []
    out = None
    for i in range(args.warmup + args.iters):
        t = time.perf_counter()
        out = run()
        dt = (time.perf_counter() - t) * 1e3
        if i >= args.warmup:
            samples.append(dt)

    if args.check_out:
        if args.task == "caption":
            ids_out, feats_out = out
            check["ids"] = ids_out.tolist()
            check["features0"] = feats_out[0].tolist()
            check["prefix"] = mapper.prefix
            check["tokens"] = args.tokens
            if args.self_check:
                with torch.inference_mode():
                    ref = greedy_no_cache(mapper, gpt, feats_out, args.tokens)
                check["no_cache_ids_match"] = bool(torch.equal(ref, ids_out))
        elif args.task == "features":
            check["features"] = out.tolist()
        else:  # ce-step, scst-step
            check["losses"] = losses  # one per step, warm-up steps included (weights change every step)
            check["ids"] = ids.tolist()
        check["pixels"] = args.pixels or (f"generated: torch.randn seed {args.seed}" if need_clip else None)
        with open(args.check_out, "w") as f:
            json.dump(check, f)
    if args.profile and args.task == "caption":
        with torch.inference_mode():
            feats0 = clip(pixels)
            reps = max(2, min(args.iters, 3))
            clip_t, dec_t = [], []
            for _ in range(reps):
                t = time.perf_counter()
                clip(pixels)
                clip_t.append((time.perf_counter() - t) * 1e3)
                t = time.perf_counter()
                decode_ids(mapper(feats0), gpt, args.tokens, sample=False)
                dec_t.append((time.perf_counter() - t) * 1e3)
        extra["profile"] = {"clip_ms": statistics.median(clip_t), "decode_ms": statistics.median(dec_t)}
    if args.self_check and args.task == "caption" and not args.check_out:
        with torch.inference_mode():
            ref = greedy_no_cache(mapper, gpt, out[1], args.tokens)
        extra["no_cache_ids_match"] = bool(torch.equal(ref, out[0]))
    if args.task in ("ce-step", "scst-step"):
        extra["loss_first"] = losses[0]
        extra["loss_last"] = losses[-1]
        # per-phase medians over the timed steps (warm-up excluded)
        extra["phases_ms"] = {k: round(statistics.median(v[args.warmup:]), 3) for k, v in phases.items()}

    res = {
        "task": args.task,
        "weights": args.captioner or args.models,
        "batch": B,
        "threads": torch.get_num_threads(),
        "iters": args.iters,
        "mean_ms": statistics.fmean(samples),
        "median_ms": statistics.median(samples),
        "min_ms": min(samples),
        "samples_ms": [round(s, 3) for s in samples],
        "load_ms": round(load_ms, 3),
        "warmup": args.warmup,
        "tokens": args.tokens if args.task != "features" else None,
        "prefix": args.prefix,
        "torch": torch.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        **extra,
    }
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
