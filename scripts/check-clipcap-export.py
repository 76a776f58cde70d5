#!/usr/bin/env python3
"""Checks a ClipCap checkpoint (e.g. written by semicap's `captioner.save(dir, { format: 'clipcap' })`) against the
independent PyTorch reference of scripts/make-clipcap-fixtures.py.

  python3 scripts/check-clipcap-export.py FILE.pt test/fixtures/clipcap/expected.json NAME
      [--old-transformers] [--no-beam] [--same-weights]

NAME is a checkpoint of expected.json ('mlp', 'transformer', 'only_prefix'): its mapper config, the GPT-2 config, the
image features and the expected caption ids come from there. The file is read with torch.load(weights_only=True)
into the reference ClipCaptionModel with load_state_dict(strict=True):

  * default: GPT-2 as current transformers builds it, without the attn.bias / attn.masked_bias buffers in the
    state_dict (they are non-persistent there), so the file must not contain them;
  * --old-transformers: GPT-2 as transformers 4.x (ClipCap's released checkpoints) built it, with those buffers, so the
    file must contain them.

Then the checkpoint's tensors must be float32, gpt.lm_head.weight (when present) must equal gpt.transformer.wte.weight,
and ClipCap's greedy decoding (generate2) and beam search (generate_beam; skip with --no-beam) on the expected.json
features must give the expected token ids. With --same-weights every tensor must also equal the fixture checkpoint
(expected.json's folder / its `file`), for a load -> save round trip. Exit status 0 when everything matches, 1 otherwise (2: usage errors).
"""
import argparse
import importlib.util
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def load_reference():
    path = os.path.join(HERE, 'make-clipcap-fixtures.py')
    spec = importlib.util.spec_from_file_location('clipcap_reference', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def main():
    ap = argparse.ArgumentParser(description='Check a ClipCap checkpoint against the fixtures\' expected captions.')
    ap.add_argument('checkpoint', help='the .pt file (torch.save of a ClipCaptionModel state_dict)')
    ap.add_argument('expected', help='test/fixtures/clipcap/expected.json')
    ap.add_argument('name', help='checkpoint entry in expected.json: mlp, transformer or only_prefix')
    ap.add_argument('--old-transformers', action='store_true',
                    help='GPT-2 with persistent attn.bias/attn.masked_bias buffers (transformers 4.x state_dicts)')
    ap.add_argument('--no-beam', action='store_true', help='check greedy captions only')
    ap.add_argument('--same-weights', action='store_true',
                    help='also require every tensor to equal the fixture checkpoint named in expected.json '
                         '(for a load -> save round trip; attn.bias/attn.masked_bias buffers are not compared)')
    args = ap.parse_args()
    torch.set_num_threads(1)

    ref = load_reference()
    with open(args.expected, encoding='utf-8') as f:
        expected = json.load(f)
    entries = expected.get('checkpoints', {})
    if args.name not in entries:
        print(f'FAIL: {args.expected} has no checkpoint {args.name!r} (has {sorted(entries)})', file=sys.stderr)
        return 2
    entry = entries[args.name]
    stop_id = expected['tokenizer']['stop_id']
    features = torch.tensor(expected['features']['values'], dtype=torch.float32)

    try:
        state = torch.load(args.checkpoint, map_location='cpu', weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to read is the answer
        print(f'FAIL: torch.load({args.checkpoint!r}, weights_only=True): {type(err).__name__}: {err}', file=sys.stderr)
        return 1
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        print(f'FAIL: {args.checkpoint} does not hold a state_dict (dict of name -> tensor): {type(state).__name__}',
              file=sys.stderr)
        return 1

    problems = []
    for k, v in state.items():
        if v.is_floating_point() and v.dtype != torch.float32:
            problems.append(f'{k} is {v.dtype}, expected torch.float32')
    if 'gpt.lm_head.weight' in state and 'gpt.transformer.wte.weight' in state:
        if not torch.equal(state['gpt.lm_head.weight'], state['gpt.transformer.wte.weight']):
            problems.append('gpt.lm_head.weight differs from gpt.transformer.wte.weight (they are tied)')

    if args.same_weights:
        original_path = os.path.join(os.path.dirname(os.path.abspath(args.expected)), entry['file'])
        original = torch.load(original_path, map_location='cpu', weights_only=True)
        buffers = ('.attn.bias', '.attn.masked_bias')
        for k, v in original.items():
            if k.endswith(buffers):
                continue
            if k not in state:
                continue  # load_state_dict below names missing keys
            if state[k].shape != v.shape or not torch.equal(state[k].to(v.dtype), v):
                problems.append(f'{k} differs from {original_path}')

    cls = {'ClipCaptionModel': ref.ClipCaptionModel, 'ClipCaptionPrefix': ref.ClipCaptionPrefix}[entry['class']]
    mask_dtype = torch.bool if entry.get('attn_bias_dtype') == 'bool' else torch.uint8
    model = cls(expected['gpt2'], entry['mapper'], persistent_buffers=args.old_transformers,
                mask_dtype=mask_dtype).eval()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        mode = 'transformers 4.x (--old-transformers)' if args.old_transformers else 'current transformers'
        print(f'FAIL: load_state_dict(strict=True) into the reference {entry["class"]} ({mode} GPT-2, mapper '
              f'{entry["mapper"]}):\n{err}', file=sys.stderr)
        return 1
    if args.old_transformers:
        for i, block in enumerate(model.gpt.transformer.h):
            n = block.attn.bias.shape[-1]
            if not torch.equal(block.attn.bias.to(torch.bool), torch.ones(n, n, dtype=torch.bool).tril().view(1, 1, n, n)):
                problems.append(f'gpt.transformer.h.{i}.attn.bias is not the lower-triangular causal mask')

    ok = True
    for image in entry['images']:
        i = image['image']
        embed = model.prefix_embed(features[i:i + 1])
        greedy, _ = ref.generate_greedy(model, embed, stop_id)
        checks = [('greedy', greedy, image['greedy'])]
        if not args.no_beam:
            beam, _ = ref.generate_beam(model, embed, stop_id)
            checks.append(('beam', beam, image['beam']))
        for kind, got, want in checks:
            if got == want:
                print(f'ok   image {i} {kind}: {len(got)} tokens')
            else:
                ok = False
                at = first_difference(got, want)
                print(f'FAIL image {i} {kind}: {len(got)} tokens vs {len(want)} expected; first difference at '
                      f'{at}: got {got[at:at + 5]}, expected {want[at:at + 5]}\n     got      {got}\n     expected {want}')
    for p in problems:
        print(f'FAIL: {p}')
    if ok and not problems:
        print(f'PASS: {args.checkpoint} ({args.name}) loads strictly and reproduces the expected captions')
        return 0
    print(f'FAIL: {args.checkpoint} ({args.name}) does not match {args.expected}', file=sys.stderr)
    return 1


if __name__ == '__main__':
    sys.exit(main())
