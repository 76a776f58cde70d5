#!/usr/bin/env python3
"""Writes the PyTorch checkpoint fixtures of test/torch-checkpoint.test.ts into test/fixtures/torch/.

Every file is written by real torch.save (python3 + torch only), from seeded random weights made here, and
expected.json records, per fixture, what torch.load returns for it: every tensor's dtype, shape and values (flat,
row-major), and the non-tensor leaves. CI has no python: the test reads the committed files.

    python3 scripts/make-torch-fixtures.py            # torch >= 1.6 (written with Debian's 1.13)
"""
import collections
import json
import os
import shutil
import struct
import sys

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'test', 'fixtures', 'torch')
g = torch.Generator().manual_seed(20261201)


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, generator=g).to(dtype)


def randint(lo, hi, *shape, dtype):
    return torch.randint(lo, hi, shape, generator=g).to(dtype)


DTYPE_NAMES = {
    torch.float32: 'F32', torch.float64: 'F64', torch.float16: 'F16', torch.bfloat16: 'BF16', torch.int64: 'I64',
    torch.int32: 'I32', torch.int16: 'I16', torch.int8: 'I8', torch.uint8: 'U8', torch.bool: 'BOOL',
}


def describe(t):
    flat = t.detach().contiguous().reshape(-1)
    if t.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        values = [float(x) for x in flat.double().tolist()]
    elif t.dtype == torch.bool:
        values = [1 if x else 0 for x in flat.tolist()]
    else:
        values = [int(x) for x in flat.tolist()]
    return {'dtype': DTYPE_NAMES[t.dtype], 'shape': list(t.shape), 'values': values}


def leaf_text(v):
    """What the native reader lists in metadata for a non-tensor leaf (native/torch_checkpoint.h)."""
    if v is None:
        return 'None'
    if isinstance(v, bool):
        return 'True' if v else 'False'
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return '%.17g' % v
    if isinstance(v, str):
        return "'" + v + "'"
    if isinstance(v, (list, tuple)):
        return ('list' if isinstance(v, list) else 'tuple') + '[%d]' % len(v)
    raise TypeError(type(v))


def flatten(obj, prefix=''):
    """Like the native reader: nested dicts join with '.', non-tensor leaves go to metadata."""
    tensors, meta = collections.OrderedDict(), {}
    for k, v in obj.items():
        name = k if not prefix else prefix + '.' + k
        if isinstance(v, dict):
            t, m = flatten(v, name)
            tensors.update(t)
            meta.update(m)
        elif isinstance(v, torch.Tensor):
            tensors[name] = describe(v)
        else:
            meta[name] = leaf_text(v)
    return tensors, meta


expected = {}


def save(name, obj, **kw):
    path = os.path.join(OUT, name)
    torch.save(obj, path, **kw)
    back = torch.load(path)  # our own files (1.13's weights_only refuses BINFLOAT, which 'lr' needs)
    tensors, meta = flatten(back)
    expected[name] = {'names': list(tensors.keys()), 'tensors': tensors, 'metadata': meta}


def safetensors_bytes(tensors):
    """A safetensors file by hand: 8-byte little-endian header length, JSON header, data."""
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        t = t.contiguous()
        data = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()  # little-endian hosts
        header[name] = {'dtype': DTYPE_NAMES[t.dtype], 'shape': list(t.shape), 'data_offsets': [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    text = json.dumps(header, separators=(',', ':'))
    text += ' ' * ((8 - len(text) % 8) % 8)
    return struct.pack('<Q', len(text)) + text.encode() + b''.join(blobs)


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)

    # Every dtype the reader knows.
    save('dtypes.pt', collections.OrderedDict([
        ('f32', randn(3, 4)), ('f64', randn(2, 3, dtype=torch.float64)), ('f16', randn(5, dtype=torch.float16)),
        ('bf16', randn(2, 2, dtype=torch.bfloat16)), ('i64', randint(-2**40, 2**40, 4, dtype=torch.int64)),
        ('i32', randint(-2**31, 2**31 - 1, 3, dtype=torch.int32)), ('i16', randint(-2**15, 2**15 - 1, 3, dtype=torch.int16)),
        ('i8', randint(-128, 127, 4, dtype=torch.int8)), ('u8', randint(0, 255, 5, dtype=torch.uint8)),
        ('bool', randint(0, 2, 6, dtype=torch.bool)), ('scalar', randn(())), ('empty', randn(0, 3)),
    ]))

    # Views: transposed, sliced with a storage offset, a column (stride 6), expanded (stride 0), a contiguous row.
    base = randn(4, 6)
    col = randn(3, 1)
    save('views.pt', collections.OrderedDict([
        ('base', base), ('transposed', base.t()), ('sliced', base[1:3, 2:5]), ('column', base[:, 1]),
        ('row', base[2]), ('expanded', col.expand(3, 4)), ('permuted', randn(2, 3, 4).permute(2, 0, 1)),
    ]))

    # Shared storage: a tied head (the same tensor twice) and a view of its second half.
    wte = randn(10, 4)
    save('shared.pt', collections.OrderedDict([('transformer.wte.weight', wte), ('lm_head.weight', wte), ('half', wte[5:])]))

    # nn.Parameter values (_rebuild_parameter), and a module's state_dict (an OrderedDict with _metadata: BUILD).
    save('params.pt', {'w': torch.nn.Parameter(randn(2, 3)), 'b': torch.nn.Parameter(randn(2), requires_grad=False)})
    torch.manual_seed(7)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    save('module.pt', mlp.state_dict())

    # Nested dicts and non-tensor leaves (a training checkpoint).
    save('nested.pt', {
        'epoch': 3, 'step': 1200, 'lr': 0.001, 'name': 'run-1', 'flags': [1, 2], 'shape': (2, 3), 'ok': True, 'none': None,
        'model': collections.OrderedDict([('linear.weight', randn(2, 2)), ('linear.bias', randn(2))]),
        'ema': {'inner': {'w': randn(3)}},
    })

    # Pickle protocols 2, 4 and 5 (4 and 5 use FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL).
    small = collections.OrderedDict([('a', randn(2, 3)), ('b', randint(0, 9, 4, dtype=torch.int64)), ('c', randn(3).t())])
    for p in (2, 4, 5):
        save('proto%d.pt' % p, small, pickle_protocol=p)

    # The legacy (pre-1.6) format: refused with a re-save hint.
    torch.save(small, os.path.join(OUT, 'legacy.pt'), _use_new_zipfile_serialization=False)

    # A sharded torch folder (as transformers' save_pretrained(safe_serialization=False) writes it).
    sd = collections.OrderedDict([('h.0.w', randn(3, 2)), ('h.0.b', randn(3)), ('h.1.w', randn(3, 2)), ('h.1.b', randn(3))])
    folder = os.path.join(OUT, 'sharded-torch')
    os.makedirs(folder)
    shards = [('pytorch_model-00001-of-00002.bin', ['h.0.w', 'h.0.b']), ('pytorch_model-00002-of-00002.bin', ['h.1.w', 'h.1.b'])]
    weight_map = {}
    for fname, names in shards:
        torch.save(collections.OrderedDict((n, sd[n]) for n in names), os.path.join(folder, fname))
        for n in names:
            weight_map[n] = fname
    with open(os.path.join(folder, 'pytorch_model.bin.index.json'), 'w') as f:
        json.dump({'metadata': {'total_size': sum(t.numel() * 4 for t in sd.values())}, 'weight_map': weight_map}, f, indent=2)
    expected['sharded-torch'] = {'names': list(sd.keys()), 'tensors': {n: describe(t) for n, t in sd.items()},
                                 'metadata': {'total_size': str(sum(t.numel() * 4 for t in sd.values()))}}

    # A sharded safetensors folder, written by hand (no safetensors package needed).
    sd2 = collections.OrderedDict([('x.weight', randn(2, 2)), ('x.bias', randn(2, dtype=torch.float16)), ('y', randint(0, 5, 3, dtype=torch.int64))])
    folder = os.path.join(OUT, 'sharded-safetensors')
    os.makedirs(folder)
    parts = [('model-00001-of-00002.safetensors', ['x.weight', 'x.bias']), ('model-00002-of-00002.safetensors', ['y'])]
    weight_map = {}
    for fname, names in parts:
        with open(os.path.join(folder, fname), 'wb') as f:
            f.write(safetensors_bytes(collections.OrderedDict((n, sd2[n]) for n in names)))
        for n in names:
            weight_map[n] = fname
    with open(os.path.join(folder, 'model.safetensors.index.json'), 'w') as f:
        json.dump({'metadata': {'total_size': 42, 'format': 'pt'}, 'weight_map': weight_map}, f, indent=2)
    expected['sharded-safetensors'] = {'names': list(sd2.keys()), 'tensors': {n: describe(t) for n, t in sd2.items()},
                                       'metadata': {'total_size': '42', 'format': 'pt'}}

    expected['_torch_version'] = torch.__version__
    with open(os.path.join(OUT, 'expected.json'), 'w') as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write('\n')
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(OUT) for n in ns)
    print('wrote %s (%d bytes)' % (OUT, total), file=sys.stderr)


if __name__ == '__main__':
    main()
