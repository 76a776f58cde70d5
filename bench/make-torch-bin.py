"""Writes a Hugging Face GPT-2 folder's model.safetensors as pytorch_model.bin with real torch.save (the zip format),
as the hub's GPT-2 files are: the `attn.bias` causal masks and `attn.masked_bias` buffers, and `lm_head.weight`
sharing wte's storage. Optionally also a 2-shard .bin folder with its index json.

/usr/bin/python3 bench/make-torch-bin.py <gpt2 folder with model.safetensors> <out folder> [--shards N]
Needs Debian's python3-torch only (safetensors parsed by hand).
"""
import argparse
import json
import os
import shutil
import struct

import torch


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", name
        a, b = info["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[a:b]), dtype=torch.float32).reshape(info["shape"])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--shards", type=int, default=0)
    a = ap.parse_args()
    cfg = json.load(open(os.path.join(a.src, "config.json")))
    weights = read_safetensors(os.path.join(a.src, "model.safetensors"))
    n = cfg["n_positions"]
    mask = torch.tril(torch.ones(n, n, dtype=torch.bool)).view(1, 1, n, n)
    sd = {}
    for k, v in weights.items():
        sd["transformer." + k] = v
    for i in range(cfg["n_layer"]):
        sd[f"transformer.h.{i}.attn.bias"] = mask
        sd[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    os.makedirs(a.out, exist_ok=True)
    shutil.copy(os.path.join(a.src, "config.json"), os.path.join(a.out, "config.json"))
    if a.shards <= 1:
        torch.save(sd, os.path.join(a.out, "pytorch_model.bin"))
        return
    names = list(sd)
    per = (len(names) + a.shards - 1) // a.shards
    weight_map = {}
    for s in range(a.shards):
        fname = f"pytorch_model-{s + 1:05d}-of-{a.shards:05d}.bin"
        part = {k: sd[k] for k in names[s * per:(s + 1) * per]}
        torch.save(part, os.path.join(a.out, fname))
        weight_map.update({k: fname for k in part})
    json.dump({"metadata": {}, "weight_map": weight_map}, open(os.path.join(a.out, "pytorch_model.bin.index.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
