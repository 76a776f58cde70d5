#!/usr/bin/env python3
"""Export the benchmark's captioner to ONNX for the ONNX Runtime peer (bench/ort/driver.ts).

Reads a Captioner.save() folder (what bench/run.ts's prepare step writes: model.safetensors with the mapper and
GPT-2, config.json, clip/) through bench/reference.py's loader and functional model code (the very functions the
eager side times) and writes three graphs with torch.onnx.export (tracing, opset 17, float32):

  clip_features.onnx  pixels [B,3,S,S] -> features [B,clip_dim]          (CLIPModel.get_image_features, not normalised)
  prefill.onnx        features [B,clip_dim] -> (L2 normalisation when the captioner's normalizePrefix is set) ->
                      MLP mapper -> prefix [B,P,d] at positions 0..P-1 -> GPT-2 over the prefix ->
                      logits [B,V] (last position) + present_key_i / present_value_i [B,H,P,hd] per layer
  decode.onnx         input_ids [B,1] (int64), position [1] (int64), past_key_i / past_value_i [B,H,Tpast,hd] ->
                      logits [B,V] + present_key_i / present_value_i [B,H,Tpast+1,hd]

The mapper lives in the prefill graph (not after CLIP) so that "CLIP features" is a graph of its own and no weight is
stored twice; the split matches the addon's (Clip.imageFeatures, then Captioner.captionFeatures). Batch and sequence
axes are dynamic. Exports are cached: OUT/meta.json records a hash of the weight files, the configs, this script
and torch's version; a rerun with the same hash only prints the meta line.

  /usr/bin/python3 bench/ort/export.py --captioner bench/out/captioner --out bench/out/ort/captioner

Needs Debian's python3-torch (1.13) and python3-onnx (onnx.checker). Prints one JSON line (meta.json) on stdout.
"""

import argparse
import hashlib
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no bench/__pycache__ from importing reference.py
sys.path.insert(0, os.path.dirname(HERE))  # bench/: reference.py

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import reference  # noqa: E402
from reference import _load_models  # noqa: E402

OPSET = 17
EXPORT_FORMAT = 1
FILES = ("clip_features.onnx", "prefill.onnx", "decode.onnx")


def _hash_inputs(captioner):
    with open(os.path.join(captioner, "config.json")) as f:
        cfg = json.load(f)
    clip_dir = os.path.join(captioner, cfg.get("semicap", {}).get("clip", "clip"))
    h = hashlib.sha256()
    h.update(f"format {EXPORT_FORMAT} opset {OPSET} torch {torch.__version__}\n".encode())
    for path in (os.path.abspath(__file__), os.path.join(captioner, "config.json"), os.path.join(clip_dir, "config.json"),
                 os.path.join(captioner, "model.safetensors"), os.path.join(clip_dir, "model.safetensors")):
        h.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            while True:
                chunk = f.read(1 << 24)
                if not chunk:
                    break
                h.update(chunk)
    return h.hexdigest()[:24], cfg


class _Weights(torch.nn.Module):
    """Registers the loaded tensors as buffers so that the tracer records them as named initializers (the functional
    code reads the same tensor objects from its dicts)."""

    def _register(self, prefix, sd):
        for k, v in sd.items():
            if isinstance(v, torch.Tensor):
                self.register_buffer(prefix + k.replace(".", "_"), v)


class ClipFeatures(_Weights):
    def __init__(self, clip):
        super().__init__()
        self.clip = clip
        self._register("clip_", {k: v for k, v in clip.sd.items() if k.startswith("vision_model.") or k == "visual_projection.weight"})

    def forward(self, pixels):
        return self.clip(pixels)


class Prefill(_Weights):
    def __init__(self, mapper, gpt, normalize):
        super().__init__()
        self.mapper, self.gpt, self.normalize = mapper, gpt, normalize
        self._register("mapper_", mapper.sd)
        self._register("gpt_", gpt.sd)

    def forward(self, features):
        f = F.normalize(features, dim=-1) if self.normalize else features
        prefix = self.mapper(f)  # [B,P,d]
        P = prefix.shape[1]
        h, presents = self.gpt.forward(prefix + self.gpt.wpe[:P])
        logits = self.gpt.logits(h[:, -1, :])
        return (logits, *[t for kv in presents for t in kv])


class Decode(_Weights):
    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt
        self._register("gpt_", gpt.sd)

    def forward(self, input_ids, position, *past):
        gpt = self.gpt
        x = F.embedding(input_ids, gpt.wte) + F.embedding(position, gpt.wpe)  # [B,1,d] + [1,d]
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(gpt.layers)]
        h, presents = gpt.forward(x, pairs)
        logits = gpt.logits(h[:, -1, :])
        return (logits, *[t for kv in presents for t in kv])


# reference._ln passes (x.shape[-1],) as layer_norm's normalized_shape; under the tracer that size is a graph value and
# the ONNX exporter needs a constant. The same function with the size read from the weight before tracing:
_STATIC_DIM = {}


def _ln_static(x, sd, prefix, eps):
    w = sd[prefix + ".weight"]
    return F.layer_norm(x, (_STATIC_DIM[id(w)],), w, sd[prefix + ".bias"], eps)


def _kv_names(kind, layers):
    return [f"{kind}_{w}_{i}" for i in range(layers) for w in ("key", "value")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--captioner", required=True, help="a Captioner.save() folder")
    ap.add_argument("--out", required=True, help="output folder (clip_features.onnx, prefill.onnx, decode.onnx, meta.json)")
    ap.add_argument("--force", action="store_true", help="export even when meta.json's hash matches")
    ap.add_argument("--no-check", action="store_true", help="skip onnx.checker")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    digest, cfg = _hash_inputs(args.captioner)
    hash_ms = (time.perf_counter() - t0) * 1e3
    meta_path = os.path.join(args.out, "meta.json")
    if not args.force and os.path.exists(meta_path) and all(os.path.exists(os.path.join(args.out, f)) for f in FILES):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("hash") == digest:
            meta["cached"] = True
            meta["hash_ms"] = round(hash_ms, 1)
            print(json.dumps(meta), flush=True)
            return 0

    import onnx  # python3-onnx (Debian)

    torch.set_grad_enabled(False)
    t1 = time.perf_counter()
    clip, mapper, gpt, _ = _load_models(None, True, True, captioner=args.captioner)
    for sd in (clip.sd, mapper.sd, gpt.sd):
        for v in sd.values():
            if isinstance(v, torch.Tensor) and v.dim() >= 1:
                _STATIC_DIM[id(v)] = int(v.shape[-1])
    reference._ln = _ln_static
    normalize = bool(cfg.get("semicap", {}).get("normalizePrefix", False))
    L, H, d = gpt.layers, gpt.heads, gpt.d
    hd = d // H
    P = mapper.prefix
    os.makedirs(args.out, exist_ok=True)
    timings = {"load_ms": (time.perf_counter() - t1) * 1e3}

    def export(module, inputs, path, in_names, out_names, axes):
        t = time.perf_counter()
        tmp = path + ".tmp"
        torch.onnx.export(module, inputs, tmp, input_names=in_names, output_names=out_names, dynamic_axes=axes,
                          opset_version=OPSET, do_constant_folding=True)
        if not args.no_check:
            onnx.checker.check_model(tmp)
        os.replace(tmp, path)
        timings[os.path.basename(path)] = {"export_ms": round((time.perf_counter() - t) * 1e3, 1), "bytes": os.path.getsize(path)}

    # The tracer warns about reference.py's `if T > 1` (causal mask) and sqrt(head_dim): both are fixed per graph by
    # construction (prefill: T = P > 1 with no past; decode: T = 1), so the baked-in branch is the right one.
    Bx = 2  # example batch (not 1: no batch-1 special cases get baked in)
    S = clip.image
    pixels = torch.randn(Bx, 3, S, S, generator=torch.Generator().manual_seed(0))
    export(ClipFeatures(clip).eval(), (pixels,), os.path.join(args.out, FILES[0]), ["pixels"], ["features"],
           {"pixels": {0: "batch"}, "features": {0: "batch"}})

    feats = clip(pixels)
    present = _kv_names("present", L)
    past_names = _kv_names("past", L)
    export(Prefill(mapper, gpt, normalize).eval(), (feats,), os.path.join(args.out, FILES[1]), ["features"], ["logits", *present],
           {"features": {0: "batch"}, "logits": {0: "batch"}, **{n: {0: "batch"} for n in present}})

    Tp = P + 3  # example past length
    past = [torch.randn(Bx, H, Tp, hd, generator=torch.Generator().manual_seed(1 + i)) * 0.5 for i in range(2 * L)]
    ids = torch.tensor([[11], [13]], dtype=torch.long)
    position = torch.tensor([Tp], dtype=torch.long)
    export(Decode(gpt).eval(), (ids, position, *past), os.path.join(args.out, FILES[2]), ["input_ids", "position", *past_names],
           ["logits", *present],
           {"input_ids": {0: "batch"}, "logits": {0: "batch"},
            **{n: {0: "batch", 2: "past_len"} for n in past_names}, **{n: {0: "batch", 2: "total_len"} for n in present}})

    meta = {
        "hash": digest,
        "cached": False,
        "captioner": os.path.abspath(args.captioner),
        "opset": OPSET,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "files": list(FILES),
        "image_size": S,
        "clip_dim": mapper.in_dim,
        "prefix": P,
        "n_layer": L,
        "n_head": H,
        "n_embd": d,
        "head_dim": hd,
        "vocab": gpt.vocab,
        "n_positions": gpt.n_positions,
        "normalize_prefix": normalize,
        "hash_ms": round(hash_ms, 1),
        "timings": timings,
        "total_ms": round((time.perf_counter() - t0) * 1e3, 1),
    }
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=1)
    print(json.dumps(meta), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
