#!/usr/bin/env python3
"""Hardware floors for the semicap benchmark (float32, CPU, through the same libtorch).

  /usr/bin/python3 bench/floors.py [--threads 1,2]
      measures memory bandwidth (large tensor copy and sum, best of several) and float32 matmul
      rates (GFLOP/s) and prints one JSON line.

  /usr/bin/python3 bench/floors.py --models DIR --batch B --tokens 20 [--prefix 10]
                                   [--bandwidth-gbs X --gflops Y]
      also computes, from the checkpoints' configs and safetensors headers, the FLOPs and weight
      bytes of captioning (CLIP vision per image, mapper, GPT-2 prefix forward and each decode step
      with a KV cache), of the features task and of one ce-step training step, and a floor

          floor_ms = sum over phases of max(bytes / bandwidth, flops / matmul_rate)

      using the best measured rates (or the given ones, which skips measuring). The matmul rate is
      the best of at::mm (Debian's libtorch: generic reference BLAS, a few GFLOP/s) and oneDNN's
      mkldnn_linear (near the CPU's peak); "at_atmm_rate" repeats the floors at the at::mm rate.
      Prints one JSON line.

Import `measure()` / `caption_floor()` / `ce_step_floor()` to use them from Python.
"""

import argparse
import json
import os
import struct
import sys
import time

import torch


# ------------------------------------------------------------------------------------------------
# measurements


def _best(fn, reps, min_time=0.0):
    fn()  # warm (page faults, allocator)
    best = float("inf")
    t_end = time.perf_counter() + min_time
    i = 0
    while i < reps or time.perf_counter() < t_end:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        i += 1
    return best


def measure_bandwidth(mbytes=256, reps=5):
    n = mbytes * (1 << 20) // 4
    src = torch.randn(n)
    dst = torch.empty(n)
    t_copy = _best(lambda: dst.copy_(src), reps)
    t_sum = _best(lambda: src.sum(), reps)
    nb = n * 4
    return {
        "bytes": nb,
        "copy_gbs": 2 * nb / t_copy / 1e9,  # read + write
        "sum_gbs": nb / t_sum / 1e9,  # read only
    }


def measure_matmul(reps=3):
    shapes = {
        # name: (m, k, n)   C[m,n] = A[m,k] @ B[k,n]
        "mlp_tokens512": (512, 768, 3072),  # ~ CLIP batch 8 (400 tokens) / ce-step batch 8 (240 tokens) MLP
        "square1024": (1024, 1024, 1024),
        "decode_b1_mlp": (1, 768, 3072),  # GPT-2 decode step, batch 1: matrix-vector
        "decode_b8_mlp": (8, 768, 3072),
        "decode_b8_logits": (8, 768, 50257),
    }
    out = {}
    for name, (m, k, n) in shapes.items():
        a = torch.randn(m, k)
        b = torch.randn(k, n) * 0.01
        c = torch.empty(m, n)
        t = _best(lambda: torch.mm(a, b, out=c), reps, min_time=0.2)
        out[name] = {
            "mkn": [m, k, n],
            "ms": t * 1e3,
            "gflops": 2 * m * k * n / t / 1e9,
            "weight_gbs": k * n * 4 / t / 1e9,  # B read once per call
        }
    # F.linear with a [out, in] weight (the CLIP / lm_head layout) at a compute-bound size
    a = torch.randn(512, 768)
    w = torch.randn(3072, 768) * 0.01
    t = _best(lambda: torch.nn.functional.linear(a, w), reps, min_time=0.2)
    out["linear_tokens512"] = {"mkn": [512, 768, 3072], "ms": t * 1e3, "gflops": 2 * 512 * 768 * 3072 / t / 1e9,
                               "weight_gbs": 768 * 3072 * 4 / t / 1e9}
    return out


def measure_onednn(reps=3):
    """The same compute-bound product through oneDNN (mkldnn_linear on mkldnn tensors), which this
    libtorch also carries: an estimate of what the CPU itself can do when the BLAS behind at::mm
    is slow (Debian's libtorch links the generic reference libblas)."""
    if not torch.backends.mkldnn.is_available():
        return None
    m, k, n = 512, 768, 3072
    with torch.inference_mode():
        a = torch.randn(m, k).to_mkldnn()
        w = (torch.randn(n, k) * 0.01).to_mkldnn()
        t = _best(lambda: torch._C._nn.mkldnn_linear(a, w, None), reps, min_time=0.2)
    return {"mkn": [m, k, n], "ms": t * 1e3, "gflops": 2 * m * k * n / t / 1e9}


def measure(threads=None):
    if threads is not None:
        torch.set_num_threads(threads)
    bw = measure_bandwidth()
    mm = measure_matmul()
    dnn = measure_onednn()
    blas = max(v["gflops"] for v in mm.values())
    return {
        "threads": torch.get_num_threads(),
        "bandwidth": bw,
        "matmul": mm,
        "onednn_matmul": dnn,
        "best_bandwidth_gbs": max(bw["copy_gbs"], bw["sum_gbs"]),
        "best_gflops_atmm": blas,  # what at::mm / F.linear reach in this libtorch
        "best_gflops": max(blas, dnn["gflops"] if dnn else 0.0),  # what the CPU can reach (oneDNN)
    }


# ------------------------------------------------------------------------------------------------
# model accounting


def read_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return h


def _numel(shape):
    p = 1
    for s in shape:
        p *= s
    return p


def _bytes(header, pred):
    return sum(e["data_offsets"][1] - e["data_offsets"][0] for k, e in header.items() if pred(k))


def model_shapes(models_dir):
    with open(os.path.join(models_dir, "clip", "config.json")) as f:
        ccfg = json.load(f)
    with open(os.path.join(models_dir, "gpt2", "config.json")) as f:
        gcfg = json.load(f)
    ch = read_header(os.path.join(models_dir, "clip", "model.safetensors"))
    gh = read_header(os.path.join(models_dir, "gpt2", "model.safetensors"))
    mh = read_header(os.path.join(models_dir, "mapper.safetensors"))
    vc = ccfg["vision_config"]
    buffers = lambda k: k.endswith("position_ids") or k.endswith(".attn.bias") or k.endswith(".attn.masked_bias")
    return {
        "clip": {
            "d": vc["hidden_size"], "layers": vc["num_hidden_layers"], "mlp": vc["intermediate_size"],
            "patch": vc["patch_size"], "image": vc["image_size"],
            "proj": ch["visual_projection.weight"]["shape"][0],
            "weight_bytes": _bytes(ch, lambda k: (k.startswith("vision_model.") or k == "visual_projection.weight")
                                   and not buffers(k)),
        },
        "clip_text": {
            "d": ccfg["text_config"]["hidden_size"], "layers": ccfg["text_config"]["num_hidden_layers"],
            "mlp": ccfg["text_config"]["intermediate_size"],
            "proj": ch["text_projection.weight"]["shape"][0] if "text_projection.weight" in ch else 0,
            # token embedding rows are gathered, not streamed
            "weight_bytes": _bytes(ch, lambda k: (k.startswith("text_model.") or k == "text_projection.weight")
                                   and not buffers(k) and not k.endswith("token_embedding.weight")),
        },
        "mapper": {
            "in": mh["mapper.0.weight"]["shape"][1], "hidden": mh["mapper.0.weight"]["shape"][0],
            "out": mh["mapper.2.weight"]["shape"][0], "weight_bytes": _bytes(mh, lambda k: True),
        },
        "gpt2": {
            "d": gcfg["n_embd"], "layers": gcfg["n_layer"], "heads": gcfg["n_head"], "vocab": gcfg["vocab_size"],
            "mlp": gh["h.0.mlp.c_fc.weight"]["shape"][1],
            # weights streamed per forward: blocks + ln_f + wte (logits); wpe contributes a few rows only
            "step_weight_bytes": _bytes(gh, lambda k: not buffers(k) and k != "wpe.weight"),
            "param_bytes": _bytes(gh, lambda k: not buffers(k)),
        },
    }


def _phase(flops, nbytes, bw_gbs, gflops):
    t_bw = nbytes / (bw_gbs * 1e9) * 1e3
    t_fl = flops / (gflops * 1e9) * 1e3
    return {"flops": flops, "bytes": nbytes, "bw_ms": t_bw, "flop_ms": t_fl, "ms": max(t_bw, t_fl),
            "bound": "memory" if t_bw >= t_fl else "compute"}


def clip_flops_per_image(c):
    d, m, L = c["d"], c["mlp"], c["layers"]
    g = c["image"] // c["patch"]
    n = g * g + 1
    patch = 2 * g * g * d * 3 * c["patch"] ** 2
    layer = 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d + 2 * 2 * n * d * m
    return patch + L * layer + 2 * d * c["proj"]


def _gpt2_linear_flops_per_token(g):
    d, m = g["d"], g["mlp"]
    return g["layers"] * 2 * (3 * d * d + d * d + 2 * d * m)


def caption_floor(shapes, batch, tokens, prefix, bw_gbs, gflops, distinct_prefixes=None):
    """distinct_prefixes: rows whose prefix is computed (default: every row; SCST's samples of an image share one)."""
    c, mp, g = shapes["clip"], shapes["mapper"], shapes["gpt2"]
    B, P, d, L, V = batch, prefix, g["d"], g["layers"], g["vocab"]
    Bp = B if distinct_prefixes is None else distinct_prefixes
    clip = _phase(B * clip_flops_per_image(c), c["weight_bytes"], bw_gbs, gflops)
    clip["flops_per_image"] = clip_flops_per_image(c)
    mapper = _phase(Bp * 2 * (mp["in"] * mp["hidden"] + mp["hidden"] * mp["out"]), mp["weight_bytes"], bw_gbs, gflops)
    # prefix forward: P tokens, causal attention, logits for the last position only
    pre_fl = Bp * (P * _gpt2_linear_flops_per_token(g) + L * 2 * 2 * d * (P * (P + 1) // 2) + 2 * V * d)
    pre_by = g["step_weight_bytes"] + 4 * Bp * L * 2 * P * d  # weights + KV cache written
    prefill = _phase(pre_fl, pre_by, bw_gbs, gflops)
    steps = []
    for s in range(1, tokens):
        ctx = P + s  # keys/values attended by the new token (including itself)
        fl = B * (_gpt2_linear_flops_per_token(g) + L * 2 * 2 * ctx * d + 2 * V * d)
        by = g["step_weight_bytes"] + 4 * B * L * 2 * ctx * d  # weights (incl. wte for logits) + KV cache read
        steps.append(_phase(fl, by, bw_gbs, gflops))
    decode = {
        "steps": len(steps),
        "first": steps[0] if steps else None,
        "last": steps[-1] if steps else None,
        "ms": sum(s["ms"] for s in steps),
        "flops": sum(s["flops"] for s in steps),
        "bytes": sum(s["bytes"] for s in steps),
    }
    total = clip["ms"] + mapper["ms"] + prefill["ms"] + decode["ms"]
    return {"batch": B, "tokens": tokens, "prefix": P, "clip": clip, "mapper": mapper, "prefill": prefill,
            "decode": decode, "floor_ms": total, "floor_ms_per_image": total / B}


def features_floor(shapes, batch, bw_gbs, gflops):
    c = shapes["clip"]
    ph = _phase(batch * clip_flops_per_image(c), c["weight_bytes"], bw_gbs, gflops)
    return {"batch": batch, "clip": ph, "floor_ms": ph["ms"]}


def ce_step_floor(shapes, batch, tokens, prefix, bw_gbs, gflops, repeat=1, replayed=False):
    """Forward + backward (~3x forward FLOPs) + AdamW. Bytes: weights read ~3x (fwd, dX, dW),
    grads written, AdamW reads p,g,m,v and writes p,m,v, zero_grad writes g. repeat: sequences per prefix
    (batch = prefixes; SCST's samples share their image's prefix positions, computed once). replayed: the
    tokens' forward products come from the decoding that sampled them (SCST on the CPU: ProductTape), so the
    forward computes only the prefix and the attention, and reads the weights once less."""
    mp, g = shapes["mapper"], shapes["gpt2"]
    B, P, T, d, L, V = batch, prefix, tokens, g["d"], g["layers"], g["vocab"]
    lin = _gpt2_linear_flops_per_token(g)
    map_fl = B * 2 * (mp["in"] * mp["hidden"] + mp["hidden"] * mp["out"])
    prefix_fl = B * (P * lin + L * 2 * 2 * d * (P * (P + 1) // 2))
    tokens_fl = B * repeat * (T * lin + L * 2 * 2 * d * (T * P + T * (T + 1) // 2) + T * 2 * V * d)
    gpt_fl = prefix_fl + tokens_fl
    fwd = map_fl + gpt_fl
    param_bytes = mp["weight_bytes"] + g["param_bytes"]
    skipped = B * repeat * (T - 1) * (lin + 2 * V * d) if replayed else 0  # (the first token: from the prefix)
    fb = _phase(3 * fwd - skipped, (3 if replayed else 4) * param_bytes, bw_gbs, gflops)
    fb["forward_flops"] = fwd
    adamw = _phase(11 * (param_bytes // 4), 8 * param_bytes, bw_gbs, gflops)  # ~11 flops/param, 8 x 4 B/param
    adamw["params"] = param_bytes // 4
    return {"batch": B, "tokens": T, "prefix": P, "forward_backward": fb, "adamw": adamw,
            "floor_ms": fb["ms"] + adamw["ms"]}


def clip_text_flops_per_caption(t, n):
    d, m, L = t["d"], t["mlp"], t["layers"]
    layer = 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d + 2 * 2 * n * d * m
    return L * layer + 2 * d * t["proj"]


def scst_step_floor(shapes, batch, tokens, prefix, samples, clip_len, bw_gbs, gflops):
    """One SCST step: greedy decoding of B rows and sampling of B*K rows (mapper + prefix forward + decode
    steps, as in caption_floor without CLIP vision), the CLIP text tower over B*(K+1) captions of clip_len
    tokens, then forward + backward + AdamW over the B*K sampled rows (ce_step_floor of B prefixes x K).
    floor_ms: the samples' forward products replayed from the decoding (what semicap computes on the CPU);
    floor_recompute_ms: computed again (what eager PyTorch computes)."""
    B, K = batch, samples
    # The greedy rows and the samples decode together (one pass over the weights per token), and the B*(K+1)
    # rows have B distinct prefixes; the training forward and backward compute each image's prefix once.
    s = caption_floor(shapes, B * (K + 1), tokens, prefix, bw_gbs, gflops, distinct_prefixes=B)
    t = shapes["clip_text"]
    text = _phase(B * (K + 1) * clip_text_flops_per_caption(t, clip_len), t["weight_bytes"], bw_gbs, gflops)
    train = ce_step_floor(shapes, B, tokens, prefix, bw_gbs, gflops, repeat=K, replayed=True)
    recompute = ce_step_floor(shapes, B, tokens, prefix, bw_gbs, gflops, repeat=K)
    decode_ms = s["mapper"]["ms"] + s["prefill"]["ms"] + s["decode"]["ms"]
    total = decode_ms + text["ms"] + train["floor_ms"]
    return {"batch": B, "samples": K, "tokens": tokens, "clip_len": clip_len, "decode_ms": decode_ms,
            "text": text, "train": train, "floor_ms": total,
            "floor_recompute_ms": decode_ms + text["ms"] + recompute["floor_ms"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", help="comma-separated thread counts to measure at (default: torch's default)")
    ap.add_argument("--models", help="folder with clip/, gpt2/, mapper.safetensors: also print the floors")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--prefix", type=int, default=None, help="default: from the mapper's shape")
    ap.add_argument("--bandwidth-gbs", type=float, help="use this bandwidth instead of measuring")
    ap.add_argument("--gflops", type=float, help="use this matmul rate instead of measuring")
    ap.add_argument("--samples", type=int, default=5, help="SCST samples per image (scst_step floor)")
    ap.add_argument("--clip-len", type=int, default=24, help="CLIP text tokens per caption (scst_step floor)")
    args = ap.parse_args(argv)

    res = {"torch": torch.__version__, "cpu_count": os.cpu_count(), "default_threads": torch.get_num_threads()}
    given = args.bandwidth_gbs is not None and args.gflops is not None
    if not given:
        counts = [int(t) for t in args.threads.split(",")] if args.threads else [torch.get_num_threads()]
        default = torch.get_num_threads()
        res["measured"] = [measure(t) for t in counts]
        torch.set_num_threads(default)
        bw = args.bandwidth_gbs or max(m["best_bandwidth_gbs"] for m in res["measured"])
        fl = args.gflops or max(m["best_gflops"] for m in res["measured"])
        fl_mm = max(m["best_gflops_atmm"] for m in res["measured"])
    else:
        bw, fl, fl_mm = args.bandwidth_gbs, args.gflops, None
    res["bandwidth_gbs"] = bw
    res["gflops"] = fl
    res["gflops_atmm"] = fl_mm
    if args.models:
        shapes = model_shapes(args.models)
        gd = shapes["gpt2"]["d"]
        prefix = args.prefix or shapes["mapper"]["out"] // gd
        res["models"] = args.models
        res["shapes"] = shapes
        res["caption"] = caption_floor(shapes, args.batch, args.tokens, prefix, bw, fl)
        res["features"] = features_floor(shapes, args.batch, bw, fl)
        res["ce_step"] = ce_step_floor(shapes, args.batch, args.tokens, prefix, bw, fl)
        res["scst_step"] = scst_step_floor(shapes, args.batch, args.tokens, prefix, args.samples, args.clip_len, bw, fl)
        if fl_mm:
            # the same floors if every product ran at the rate at::mm reaches in this libtorch
            res["at_atmm_rate"] = {
                "caption_floor_ms": caption_floor(shapes, args.batch, args.tokens, prefix, bw, fl_mm)["floor_ms"],
                "features_floor_ms": features_floor(shapes, args.batch, bw, fl_mm)["floor_ms"],
                "ce_step_floor_ms": ce_step_floor(shapes, args.batch, args.tokens, prefix, bw, fl_mm)["floor_ms"],
                "scst_step_floor_ms": scst_step_floor(shapes, args.batch, args.tokens, prefix, args.samples,
                                                      args.clip_len, bw, fl_mm)["floor_ms"],
            }
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
