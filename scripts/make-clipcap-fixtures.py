#!/usr/bin/env python3
"""Writes test/fixtures/clipcap/: ClipCap checkpoints and the captions an independent PyTorch reference gives for them.

ClipCap (github.com/rmokady/CLIP_prefix_caption) saves `torch.save(model.state_dict(), path)` of a ClipCaptionModel
(or ClipCaptionPrefix): `gpt.*` (a Hugging Face GPT2LMHeadModel) and `clip_project.*` (an MLP or a TransformerMapper).
This script re-implements, in plain PyTorch and written from ClipCap's description rather than copied:

  * GPT-2 with Hugging Face's semantics (Conv1D weights [in, out], gelu_new, pre-LN, ln_f, lm_head tied to wte,
    learned positions from 0, inputs_embeds), including the `attn.bias` / `attn.masked_bias` buffers that
    transformers 4.x kept in the state_dict;
  * ClipCap's mappers: MLP (Linear, Tanh, Linear) and TransformerMapper (8 heads, mlp_ratio 2, relu, LayerNorm,
    query/key-value projections without bias);
  * ClipCap's decoding: `generate2` (greedy; its top-p filter never removes the top token, so it is an argmax; stops
    on the '.' token, which is kept; at most 67 tokens) and `generate_beam` (beam 5, 67 tokens, temperature 1,
    softmax().log(), stopped beams frozen, length-averaged scores, best beam cut to its length).

The image features are `outputs.image_features` of ../shared/golden/tiny/reference.safetensors (an independent
reference of that tiny CLIP's get_image_features on `inputs.pixel_values`), read with a hand-written safetensors parser.

Deterministic: fixed seeds, one thread; running it twice gives identical files. `scripts/check-clipcap-export.py`
imports the reference classes from this file.

Usage: python3 scripts/make-clipcap-fixtures.py [--golden PATH/reference.safetensors] [--out DIR]
(On Debian the system interpreter with python3-torch is /usr/bin/python3.)
"""
import argparse
import copy
import json
import math
import os
import struct
import sys

import torch
from torch import nn
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_GOLDEN = os.path.join(REPO, '..', 'shared', 'golden', 'tiny', 'reference.safetensors')
DEFAULT_OUT = os.path.join(REPO, 'test', 'fixtures', 'clipcap')
FEATURE_TENSOR = 'outputs.image_features'

# ClipCap's decoding defaults (predict.py).
ENTRY_LENGTH = 67
BEAM_SIZE = 5
TOP_P = 0.8
STOP_TOKEN = '.'
# ClipCap's TransformerMapper hard-codes 8 heads: Transformer(dim_embedding, 8, num_layers).
CLIPCAP_MAPPER_HEADS = 8

# Tiny GPT-2 of the fixtures.
GPT2_N_EMBD = 32
GPT2_N_LAYER = 2
GPT2_N_HEAD = 4
GPT2_N_POSITIONS = 128
LN_EPS = 1e-5

# Seeds must leave a clear gap between competing tokens/beams so that float32 rounding in another implementation
# (KV cache, other kernels) cannot change a decision; candidates failing these are skipped.
MIN_GREEDY_MARGIN = 1e-3
MIN_BEAM_GAP = 2e-4


# ----------------------------------------------------------------------------------------------------------------
# safetensors (read-only, just what the golden file needs)

_ST_DTYPES = {'F32': (torch.float32, 4), 'F64': (torch.float64, 8), 'I64': (torch.int64, 8), 'I32': (torch.int32, 4),
              'F16': (torch.float16, 2), 'U8': (torch.uint8, 1), 'BOOL': (torch.bool, 1)}


def read_safetensors(path, names=None):
    """{name: tensor} from a .safetensors file: u64 LE header length, JSON header, then little-endian raw data."""
    with open(path, 'rb') as f:
        blob = f.read()
    (n,) = struct.unpack('<Q', blob[:8])
    header = json.loads(blob[8:8 + n].decode('utf-8'))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == '__metadata__' or (names is not None and name not in names):
            continue
        dtype, size = _ST_DTYPES[info['dtype']]
        start, end = info['data_offsets']
        shape = info['shape']
        count = 1
        for d in shape:
            count *= d
        if end - start != count * size:
            raise ValueError(f'{path}: {name} has {end - start} bytes for shape {shape} {info["dtype"]}')
        raw = bytearray(blob[base + start:base + end])
        t = torch.frombuffer(raw, dtype=dtype) if count else torch.empty(0, dtype=dtype)
        if sys.byteorder != 'little' and size > 1:
            t = t.view(torch.uint8).view(-1, size).flip(1).contiguous().view(dtype)
        out[name] = t.reshape(shape).clone()
    if names is not None:
        missing = [x for x in names if x not in out]
        if missing:
            raise KeyError(f'{path}: no tensor {missing}')
    return out


# ----------------------------------------------------------------------------------------------------------------
# GPT-2 byte-level BPE vocabulary

def bytes_to_unicode():
    """GPT-2's byte -> printable character table, in its id order (printable bytes first, then the rest as 256+n)."""
    order = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) + list(range(ord('®'), ord('ÿ') + 1))
    chars = list(order)
    extra = 0
    for b in range(256):
        if b not in order:
            order.append(b)
            chars.append(256 + extra)
            extra += 1
    return [(b, chr(c)) for b, c in zip(order, chars)]


# Words (as GPT-2 pre-tokenizer pieces) the merges build; each becomes one token. No merge touches '.'.
MERGE_WORDS = [' a', ' the', ' man', ' woman', ' on', ' in', 'ing', ' with', ' of', ' dog', ' sitting',
               ' street', ' red', ' and', ' is']


def bpe_apply(symbols, ranks):
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        pairs = [p for p in pairs if p[0] is not None]
        if not pairs:
            break
        _, i = min(pairs)
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def build_tokenizer():
    """vocab (token -> id), merges (list of pairs), byte table. Ids: 256 bytes in GPT-2's order, merges, <|endoftext|>."""
    table = bytes_to_unicode()
    byte_char = dict(table)
    vocab = {ch: i for i, (_, ch) in enumerate(table)}
    merges = []
    ranks = {}
    for word in MERGE_WORDS:
        word_syms = [byte_char[b] for b in word.encode('utf-8')]
        while True:
            pieces = bpe_apply(word_syms, ranks)
            if len(pieces) == 1:
                break
            pair = (pieces[0], pieces[1])  # merge left to right: Ġ+t, Ġt+h, Ġth+e
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab[pair[0] + pair[1]] = len(vocab)
    vocab['<|endoftext|>'] = len(vocab)
    assert all('.' not in a + b for a, b in merges)
    return vocab, merges, byte_char


def decode_ids(ids, vocab, byte_char):
    """Hugging Face's decode of byte-level ids (specials as their text); invalid UTF-8 -> U+FFFD. Informative only."""
    inv = {i: t for t, i in vocab.items()}
    char_byte = {c: b for b, c in byte_char.items()}
    out = bytearray()
    for i in ids:
        tok = inv[i]
        if tok == '<|endoftext|>':
            out += tok.encode('utf-8')
        else:
            out += bytes(char_byte[c] for c in tok)
    return out.decode('utf-8', errors='replace')


# ----------------------------------------------------------------------------------------------------------------
# GPT-2 with Hugging Face's module/key layout (GPT2LMHeadModel)

class Conv1D(nn.Module):
    """HF's Conv1D: y = x @ weight + bias with weight stored [in, out]."""

    def __init__(self, n_out, n_in):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], -1)


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class GPT2Attention(nn.Module):
    def __init__(self, cfg, persistent_buffers, mask_dtype):
        super().__init__()
        n = cfg['n_positions']
        # transformers 4.x kept these in the state_dict; newer versions register them non-persistent.
        self.register_buffer('bias', torch.tril(torch.ones(n, n, dtype=mask_dtype)).view(1, 1, n, n),
                             persistent=persistent_buffers)
        self.register_buffer('masked_bias', torch.tensor(-1e4), persistent=persistent_buffers)
        self.n_head = cfg['n_head']
        self.c_attn = Conv1D(3 * cfg['n_embd'], cfg['n_embd'])
        self.c_proj = Conv1D(cfg['n_embd'], cfg['n_embd'])

    def forward(self, x):
        b, t, c = x.shape
        h = self.n_head
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.reshape(b, t, h, c // h).transpose(1, 2) for z in (q, k, v))  # b h t d
        w = torch.matmul(q, k.transpose(-1, -2)) / (float(c // h) ** 0.5)
        keep = self.bias[:, :, :t, :t].to(torch.bool)
        w = torch.where(keep, w, torch.tensor(torch.finfo(w.dtype).min, dtype=w.dtype))
        w = torch.softmax(w, dim=-1)
        y = torch.matmul(w, v).transpose(1, 2).reshape(b, t, c)
        return self.c_proj(y)


class GPT2MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = Conv1D(4 * cfg['n_embd'], cfg['n_embd'])
        self.c_proj = Conv1D(cfg['n_embd'], 4 * cfg['n_embd'])

    def forward(self, x):
        return self.c_proj(gelu_new(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, cfg, persistent_buffers, mask_dtype):
        super().__init__()
        eps = cfg.get('layer_norm_epsilon', LN_EPS)
        self.ln_1 = nn.LayerNorm(cfg['n_embd'], eps=eps)
        self.attn = GPT2Attention(cfg, persistent_buffers, mask_dtype)
        self.ln_2 = nn.LayerNorm(cfg['n_embd'], eps=eps)
        self.mlp = GPT2MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2Model(nn.Module):
    def __init__(self, cfg, persistent_buffers, mask_dtype):
        super().__init__()
        self.wte = nn.Embedding(cfg['vocab_size'], cfg['n_embd'])
        self.wpe = nn.Embedding(cfg['n_positions'], cfg['n_embd'])
        self.h = nn.ModuleList([GPT2Block(cfg, persistent_buffers, mask_dtype) for _ in range(cfg['n_layer'])])
        self.ln_f = nn.LayerNorm(cfg['n_embd'], eps=cfg.get('layer_norm_epsilon', LN_EPS))

    def forward(self, inputs_embeds):
        t = inputs_embeds.shape[1]
        x = inputs_embeds + self.wpe(torch.arange(t, device=inputs_embeds.device))[None]
        for block in self.h:
            x = block(x)
        return self.ln_f(x)


class GPT2LMHeadModel(nn.Module):
    def __init__(self, cfg, persistent_buffers=True, mask_dtype=torch.uint8):
        super().__init__()
        self.transformer = GPT2Model(cfg, persistent_buffers, mask_dtype)
        self.lm_head = nn.Linear(cfg['n_embd'], cfg['vocab_size'], bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as GPT2LMHeadModel.tie_weights() does

    def forward(self, inputs_embeds):
        """Logits [B, T, V] for inputs_embeds [B, T, C] (positions 0..T-1, no attention mask)."""
        return self.lm_head(self.transformer(inputs_embeds))


# ----------------------------------------------------------------------------------------------------------------
# ClipCap's mapping networks (key names as in ClipCap's train.py)

class MLP(nn.Module):
    """Linear(sizes[0], sizes[1]), Tanh, Linear(sizes[1], sizes[2]), ... in `self.model` (keys model.0, model.2)."""

    def __init__(self, sizes):
        super().__init__()
        mods = []
        for i in range(len(sizes) - 1):
            mods.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i + 2 < len(sizes):
                mods.append(nn.Tanh())
        self.model = nn.Sequential(*mods)

    def forward(self, x):
        return self.model(x)


class MlpTransformer(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class MultiHeadAttention(nn.Module):
    """ClipCap's attention: queries from x, keys and values from one projection of y ([keys | values] halves)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.to_queries = nn.Linear(dim, dim, bias=False)
        self.to_keys_values = nn.Linear(dim, 2 * dim, bias=False)
        self.project = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        h, d = self.heads, c // self.heads
        q = self.to_queries(x).reshape(b, n, h, d).permute(0, 2, 1, 3)  # b h n d
        kv = self.to_keys_values(x).reshape(b, n, 2, h, d)
        k = kv[:, :, 0].permute(0, 2, 1, 3)
        v = kv[:, :, 1].permute(0, 2, 1, 3)
        att = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * (d ** -0.5), dim=-1)  # over keys
        y = torch.matmul(att, v).permute(0, 2, 1, 3).reshape(b, n, c)
        return self.project(y)


class TransformerLayer(nn.Module):
    def __init__(self, dim, heads, mlp_ratio=2.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MlpTransformer(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, dim, heads, num_layers):
        super().__init__()
        self.layers = nn.ModuleList([TransformerLayer(dim, heads) for _ in range(num_layers)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class TransformerMapper(nn.Module):
    """linear(feature) -> clip_length tokens; append prefix_const; transformer; keep the last prefix_length outputs."""

    def __init__(self, dim_clip, dim_embedding, prefix_length, clip_length, num_layers, heads=CLIPCAP_MAPPER_HEADS):
        super().__init__()
        self.clip_length = clip_length
        self.prefix_const = nn.Parameter(torch.zeros(prefix_length, dim_embedding))
        self.transformer = Transformer(dim_embedding, heads, num_layers)
        self.linear = nn.Linear(dim_clip, clip_length * dim_embedding)

    def forward(self, x):
        b = x.shape[0]
        seq = self.linear(x).reshape(b, self.clip_length, -1)
        seq = torch.cat([seq, self.prefix_const[None].expand(b, -1, -1)], dim=1)
        return self.transformer(seq)[:, self.clip_length:]


class ClipCaptionModel(nn.Module):
    def __init__(self, gpt_cfg, mapper, persistent_buffers=True, mask_dtype=torch.uint8):
        super().__init__()
        self.prefix_length = mapper['prefix_length']
        self.gpt = GPT2LMHeadModel(gpt_cfg, persistent_buffers, mask_dtype)
        c = gpt_cfg['n_embd']
        self.gpt_embedding_size = c
        if mapper['type'] == 'mlp':
            k = mapper['prefix_length']
            self.clip_project = MLP((mapper['prefix_size'], c * k // 2, c * k))
        elif mapper['type'] == 'transformer':
            self.clip_project = TransformerMapper(mapper['prefix_size'], c, mapper['prefix_length'],
                                                  mapper['clip_length'], mapper['num_layers'],
                                                  mapper.get('heads', CLIPCAP_MAPPER_HEADS))
        else:
            raise ValueError(f'unknown mapper type {mapper["type"]!r}')

    def prefix_embed(self, features):
        """[B, prefix_size] -> [B, prefix_length, n_embd], as predict.py: clip_project(prefix).reshape(1, K, -1)."""
        return self.clip_project(features).reshape(features.shape[0], self.prefix_length, -1)


class ClipCaptionPrefix(ClipCaptionModel):
    """ClipCap's prefix-only variant: GPT-2 frozen; its state_dict (what ClipCap saves) is the same as the full model's."""

    def parameters(self, recurse=True):
        return self.clip_project.parameters(recurse)

    def train(self, mode=True):
        super().train(mode)
        self.gpt.eval()
        return self


# ----------------------------------------------------------------------------------------------------------------
# ClipCap's decoding

@torch.no_grad()
def generate_greedy(model, embed, stop_id, entry_length=ENTRY_LENGTH, top_p=TOP_P):
    """ClipCap's generate2 for one image: embed [1, K, C]. Returns (ids, per-step top1 - top2 logit margins)."""
    wte = model.gpt.transformer.wte.weight
    seq = embed
    ids, margins = [], []
    for _ in range(entry_length):
        logits = model.gpt(seq)[0, -1] / 1.0
        ranked, order = torch.sort(logits, descending=True)
        cum = torch.cumsum(torch.softmax(ranked, dim=-1), dim=-1)
        drop = torch.zeros_like(cum, dtype=torch.bool)
        drop[1:] = cum[:-1] > top_p  # a token goes once the ones above it already pass top_p; the top one stays
        filtered = logits.clone()
        filtered[order[drop]] = float('-inf')
        tok = int(torch.argmax(filtered))
        margins.append(float(ranked[0] - ranked[1]))
        ids.append(tok)
        seq = torch.cat([seq, wte[tok].reshape(1, 1, -1)], dim=1)
        if tok == stop_id:
            break
    return ids, margins


@torch.no_grad()
def generate_beam(model, embed, stop_id, beam_size=BEAM_SIZE, entry_length=ENTRY_LENGTH, temperature=1.0):
    """ClipCap's generate_beam for one image. Returns (best beam's ids, info) where info has every beam (best first),
    their lengths and scores, and the smallest gap at each top-k cut (k-th vs (k+1)-th candidate) and between the
    best and second final score."""
    wte = model.gpt.transformer.wte.weight
    vocab = wte.shape[0]
    seq = embed
    lengths = torch.ones(beam_size)  # float32, as ClipCap's torch.ones(beam_size)
    stopped = torch.zeros(beam_size, dtype=torch.bool)
    tokens = scores = None
    gaps = []
    for _ in range(entry_length):
        logits = model.gpt(seq)[:, -1, :] / (temperature if temperature > 0 else 1.0)
        logp = logits.softmax(-1).log()
        if scores is None:
            ranked = logp[0].sort(descending=True).values
            gaps.append(float(ranked[beam_size - 1] - ranked[beam_size]))
            scores, new = logp[0].topk(beam_size)
            tokens = new[:, None]
            seq = seq.expand(beam_size, -1, -1)
        else:
            logp[stopped] = float('-inf')
            logp[stopped, 0] = 0.0
            total = scores[:, None] + logp
            lengths = lengths + (~stopped).to(lengths.dtype)
            avg = total / lengths[:, None]
            flat = avg.reshape(-1)
            ranked = flat.sort(descending=True).values
            if math.isfinite(float(ranked[beam_size])):
                gaps.append(float(ranked[beam_size - 1] - ranked[beam_size]))
            best, where = flat.topk(beam_size)
            src = torch.div(where, vocab, rounding_mode='floor')
            new = where % vocab
            lengths = lengths[src]
            tokens = torch.cat([tokens[src], new[:, None]], dim=1)
            seq = seq[src]
            scores = best * lengths
            stopped = stopped[src]
        seq = torch.cat([seq, wte[new][:, None, :]], dim=1)
        stopped = stopped | (new == stop_id)
        if bool(stopped.all()):
            break
    final = scores / lengths
    order = final.argsort(descending=True)
    ranked = final[order]
    beams = [tokens[i, :int(lengths[i])].tolist() for i in order.tolist()]
    info = {
        'beams': beams,
        'scores': [float(s) for s in ranked],
        'min_topk_gap': min(gaps),
        'final_gap': float(ranked[0] - ranked[1]),
    }
    return beams[0], info


# ----------------------------------------------------------------------------------------------------------------
# Fixture generation

def check_gpt2_against_golden(golden_path):
    """The GPT-2 reference must reproduce the golden tiny GPT-2's logits (inputs_embeds with and without a prefix),
    which an independent Hugging Face-semantics reference computed; returns the largest difference."""
    folder = os.path.join(os.path.dirname(golden_path), 'gpt2')
    ref = read_safetensors(golden_path, ['inputs.prefix', 'inputs.gpt2_ids', 'outputs.gpt2_logits',
                                         'outputs.gpt2_prefix_logits'])
    with open(os.path.join(folder, 'config.json'), encoding='utf-8') as f:
        cfg = json.load(f)
    model = GPT2LMHeadModel(cfg, persistent_buffers=False).eval()
    model.transformer.load_state_dict(read_safetensors(os.path.join(folder, 'model.safetensors')), strict=True)
    with torch.no_grad():
        emb = model.transformer.wte.weight[ref['inputs.gpt2_ids']]
        diff = max(float((model(emb) - ref['outputs.gpt2_logits']).abs().max()),
                   float((model(torch.cat([ref['inputs.prefix'], emb], 1)) - ref['outputs.gpt2_prefix_logits']).abs().max()))
    if not diff < 1e-4:
        raise SystemExit(f'GPT-2 reference differs from the golden logits by {diff}')
    return diff


def gpt2_config(vocab_size, eos_id):
    return {
        'architectures': ['GPT2LMHeadModel'],
        'model_type': 'gpt2',
        'n_embd': GPT2_N_EMBD,
        'n_head': GPT2_N_HEAD,
        'n_layer': GPT2_N_LAYER,
        'vocab_size': vocab_size,
        'n_positions': GPT2_N_POSITIONS,
        'n_ctx': GPT2_N_POSITIONS,
        'n_inner': None,
        'activation_function': 'gelu_new',
        'layer_norm_epsilon': LN_EPS,
        'initializer_range': 0.02,
        'attn_pdrop': 0.1,
        'embd_pdrop': 0.1,
        'resid_pdrop': 0.1,
        'scale_attn_weights': True,
        'scale_attn_by_inverse_layer_idx': False,
        'reorder_and_upcast_attn': False,
        'tie_word_embeddings': True,
        'bos_token_id': eos_id,
        'eos_token_id': eos_id,
        'torch_dtype': 'float32',
    }


def token_prior(vocab, byte_char):
    """A per-token logit offset (through ln_f.bias) so captions favour the merged word pieces and avoid byte tokens
    that are not printable ASCII; the '.' offset is set per candidate."""
    words = {''.join(byte_char[b] for b in w.encode('utf-8')) for w in MERGE_WORDS}
    prior = torch.zeros(len(vocab))
    for tok, i in vocab.items():
        if tok == '<|endoftext|>':
            prior[i] = -3.0
        elif tok in words:
            prior[i] = 1.5
        elif i >= 256:  # a merge on the way to a word ('Ġwo', 'Ġwom')
            prior[i] = 0.0
        elif len(tok) == 1 and ('a' <= tok <= 'z' or tok == 'Ġ'):
            prior[i] = 0.3
        elif not (len(tok) == 1 and '!' <= tok <= '~'):
            prior[i] = -2.0
    return prior


def init_weights(model, gen, vocab, byte_char, dot_id, dot_offset):
    """Random weights with non-trivial scales (LayerNorm gains/biases random too) so wrong semantics show."""

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=gen) * std + mean

    with torch.no_grad():
        for name, p in model.named_parameters():  # lm_head.weight is wte.weight and listed once
            if name.endswith('prefix_const'):
                p.copy_(normal(p.shape, 1.0))
            elif name.endswith('wte.weight'):
                p.copy_(normal(p.shape, 0.3))
            elif name.endswith('wpe.weight'):
                p.copy_(normal(p.shape, 0.1))
            elif p.dim() == 1 and ('ln_' in name or 'norm' in name) and name.endswith('weight'):
                p.copy_(normal(p.shape, 0.25, 1.0))
            elif p.dim() == 1:
                p.copy_(normal(p.shape, 0.1))
            elif name.startswith('clip_project.model.0.'):
                p.copy_(normal(p.shape, 0.45))
            elif name.startswith('clip_project.model.2.'):
                p.copy_(normal(p.shape, 1.0 / math.sqrt(p.shape[1]) * 1.4))
            elif name.startswith('clip_project.linear.'):
                p.copy_(normal(p.shape, 0.3))
            else:  # Conv1D [in, out] / Linear [out, in]
                p.copy_(normal(p.shape, 0.2))
        # Token prior: logit_t gets beta * alpha_t through ln_f.bias = beta * u and wte[t] += alpha_t * u.
        wte = model.gpt.transformer.wte.weight
        u = normal((wte.shape[1],), 1.0)
        u = u / u.norm()
        beta = 2.0
        prior = token_prior(vocab, byte_char)
        prior[dot_id] = dot_offset
        model.gpt.transformer.ln_f.bias.add_(beta * u)
        wte.add_((prior / beta)[:, None] * u[None, :])


def run_checkpoint(model, features, stop_id, beams=True):
    out = []
    for i in range(features.shape[0]):
        embed = model.prefix_embed(features[i:i + 1])
        greedy, margins = generate_greedy(model, embed, stop_id)
        r = {'embed': embed, 'greedy': greedy, 'margins': margins,
             'first_logits_max': float(model.gpt(embed)[0, -1].max())}
        if beams:
            r['beam'], r['beam_info'] = generate_beam(model, embed, stop_id)
        out.append(r)
    return out


def greedy_problem(runs, stop_id):
    """Why a candidate's greedy captions are not wanted (None when they are)."""
    greedy = [r['greedy'] for r in runs]
    if len({tuple(g) for g in greedy}) != len(greedy):
        return 'greedy captions repeat across images'
    if not any(3 <= len(g) <= 50 and g[-1] == stop_id for g in greedy):
        return 'no greedy caption of 3..50 tokens that stops at "."'
    if not any(len(g) == ENTRY_LENGTH and stop_id not in g for g in greedy):
        return 'no greedy caption runs to the limit'
    if min(min(r['margins']) for r in runs) < MIN_GREEDY_MARGIN:
        return 'greedy margin too small'
    return None


def beam_problem(runs, runs64):
    if any(a['greedy'] != b['greedy'] or a['beam'] != b['beam'] for a, b in zip(runs, runs64)):
        return 'float32 and float64 decode differently'
    if all(r['beam'] == r['greedy'] for r in runs):
        return 'beam equals greedy everywhere'
    if min(min(r['beam_info']['min_topk_gap'], r['beam_info']['final_gap']) for r in runs) < MIN_BEAM_GAP:
        return 'beam gap too small'
    return None


def sig(x, digits=7):
    return float(f'{x:.{digits}g}')


CHECKPOINTS = [
    # name, class, mapper (prefix_size filled in from the features), attn.bias dtype, (seed, '.' logit offset) to try
    # first: what the search below picked (from seeds 1000, 2000, 3000) when the fixtures were made, so that a rerun
    # does not repeat it; the search still runs when the pinned candidate fails (e.g. another torch's numerics).
    ('mlp', ClipCaptionModel, {'type': 'mlp', 'prefix_length': 10}, torch.uint8, (1001, 1.75)),
    ('transformer', ClipCaptionModel,
     {'type': 'transformer', 'prefix_length': 10, 'clip_length': 10, 'num_layers': 2, 'heads': 8}, torch.uint8,
     (2041, 3.5)),
    # ClipCap's released prefix-only model is a ClipCaptionPrefix with a transformer mapper; lengths differ here so a
    # swapped clip_length / prefix_length shows.
    ('only_prefix', ClipCaptionPrefix,
     {'type': 'transformer', 'prefix_length': 4, 'clip_length': 6, 'num_layers': 3, 'heads': 8}, torch.bool,
     (3000, 2.5)),
]

DOT_OFFSETS = [1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.5]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--golden', default=DEFAULT_GOLDEN, help='golden reference.safetensors (default: %(default)s)')
    ap.add_argument('--out', default=DEFAULT_OUT, help='output folder (default: %(default)s)')
    ap.add_argument('--max-tries', type=int, default=100, help='seeds to try per checkpoint')
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    features = read_safetensors(args.golden, [FEATURE_TENSOR])[FEATURE_TENSOR].to(torch.float32)
    gpt2_diff = check_gpt2_against_golden(args.golden)
    print(f'GPT-2 reference vs golden tiny GPT-2 logits: max |diff| {gpt2_diff:.3g}')
    vocab, merges, byte_char = build_tokenizer()
    eos_id = vocab['<|endoftext|>']
    stop_id = vocab[STOP_TOKEN]  # tokenizer.encode('.')[0]: '.' is a single byte no merge touches
    assert stop_id == 13
    cfg = gpt2_config(len(vocab), eos_id)

    os.makedirs(os.path.join(args.out, 'gpt2'), exist_ok=True)
    with open(os.path.join(args.out, 'gpt2', 'config.json'), 'w', encoding='utf-8') as f:
        json.dump(cfg, f, indent=2)
        f.write('\n')
    with open(os.path.join(args.out, 'gpt2', 'vocab.json'), 'w', encoding='utf-8') as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(args.out, 'gpt2', 'merges.txt'), 'w', encoding='utf-8') as f:
        f.write('#version: 0.2\n')
        for a, b in merges:
            f.write(f'{a} {b}\n')

    expected = {
        'generator': 'scripts/make-clipcap-fixtures.py',
        'features': {
            'source': '../shared/golden/tiny/reference.safetensors',
            'tensor': FEATURE_TENSOR,
            'note': 'independent reference of the tiny CLIP get_image_features on inputs.pixel_values; used as is '
                    '(ClipCap predict.py: no normalisation)',
            'shape': list(features.shape),
            'values': [[float(x) for x in row] for row in features],
        },
        'tokenizer': {'dir': 'gpt2', 'vocab_size': len(vocab), 'merges': len(merges), 'eos_id': eos_id,
                      'stop_token': STOP_TOKEN, 'stop_id': stop_id},
        'gpt2': {k: cfg[k] for k in ('n_embd', 'n_head', 'n_layer', 'n_positions', 'vocab_size', 'layer_norm_epsilon')},
        'decoding': {
            'greedy': {'algorithm': 'ClipCap generate2 (top-p 0.8 filter keeps the argmax: greedy)', 'entry_length':
                       ENTRY_LENGTH, 'stop': "token == tokenizer.encode('.')[0], kept in the output"},
            'beam': {'algorithm': 'ClipCap generate_beam, output = best beam cut to its length', 'beam_size': BEAM_SIZE,
                     'entry_length': ENTRY_LENGTH, 'temperature': 1.0, 'stop_token': STOP_TOKEN},
        },
        'checkpoints': {},
    }

    summary = []
    for name, cls, mapper, mask_dtype, pinned in CHECKPOINTS:
        mapper = dict(mapper, prefix_size=features.shape[1])
        chosen = None
        base = pinned[0] - pinned[0] % 1000
        candidates = [pinned] + [(base + t, off) for t in range(args.max_tries) for off in DOT_OFFSETS
                                 if (base + t, off) != pinned]
        for seed, dot_offset in candidates:
            model = cls(cfg, mapper, persistent_buffers=True, mask_dtype=mask_dtype).eval()
            init_weights(model, torch.Generator().manual_seed(seed), vocab, byte_char, stop_id, dot_offset)
            why = greedy_problem(run_checkpoint(model, features, stop_id, beams=False), stop_id)
            if why is None:
                runs = run_checkpoint(model, features, stop_id)
                runs64 = run_checkpoint(copy.deepcopy(model).double(), features.double(), stop_id)
                why = beam_problem(runs, runs64)
            if why is None:
                chosen = (seed, dot_offset, model, runs)
                break
            print(f'{name}: seed {seed}, dot offset {dot_offset} rejected: {why}', file=sys.stderr)
        if chosen is None:
            raise SystemExit(f'{name}: no acceptable candidate in {len(candidates)}')
        seed, dot_offset, model, runs = chosen
        path = os.path.join(args.out, f'{name}.pt')
        torch.save(model.state_dict(), path)
        # The file must load back into the reference exactly as written.
        state = torch.load(path, map_location='cpu', weights_only=True)
        check = cls(cfg, mapper, persistent_buffers=True, mask_dtype=mask_dtype).eval()
        check.load_state_dict(state, strict=True)
        assert state['gpt.lm_head.weight'].data_ptr() == state['gpt.transformer.wte.weight'].data_ptr()
        assert [r['greedy'] for r in run_checkpoint(check, features, stop_id)] == [r['greedy'] for r in runs]

        images = []
        for i, r in enumerate(runs):
            g, b = r['greedy'], r['beam']
            images.append({
                'image': i,
                'greedy': g,
                'greedy_length': len(g),
                'greedy_stopped': g[-1] == stop_id,
                'greedy_text': decode_ids(g, vocab, byte_char),
                'beam': b,
                'beam_length': len(b),
                'beam_stopped': b[-1] == stop_id,
                'beam_text': decode_ids(b, vocab, byte_char),
                'beam_equals_greedy': b == g,
                'debug': {
                    'prefix_embed_first': [sig(float(x)) for x in r['embed'][0, 0, :4]],
                    'prefix_embed_last': [sig(float(x)) for x in r['embed'][0, -1, :4]],
                    'first_step_logits_max': sig(r['first_logits_max']),
                    'greedy_min_margin': sig(min(r['margins']), 4),
                    'beam_min_topk_gap': sig(r['beam_info']['min_topk_gap'], 4),
                    'beam_final_gap': sig(r['beam_info']['final_gap'], 4),
                    'beam_scores': [sig(s, 6) for s in r['beam_info']['scores']],
                },
            })
        expected['checkpoints'][name] = {
            'file': f'{name}.pt',
            'class': cls.__name__,
            'mapper': mapper,
            'mapper_notes': ('MLP: Linear(prefix_size, n_embd*prefix_length//2), Tanh, Linear(.., n_embd*prefix_length)'
                             if mapper['type'] == 'mlp' else
                             'TransformerMapper: heads fixed at 8 by ClipCap (not inferable from the weights); '
                             'mlp_ratio 2, relu; to_queries/to_keys_values without bias'),
            'attn_bias_dtype': str(mask_dtype).replace('torch.', ''),
            'seed': seed,
            'dot_logit_offset': dot_offset,
            'state_dict_keys': len(state),
            'images': images,
        }
        summary.append(f'{name}: seed {seed}; greedy lengths {[len(r["greedy"]) for r in runs]}, '
                       f'beam lengths {[len(r["beam"]) for r in runs]}, '
                       f'beam==greedy {[r["beam"] == r["greedy"] for r in runs]}')

    with open(os.path.join(args.out, 'expected.json'), 'w', encoding='utf-8') as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
        f.write('\n')
    print('\n'.join(summary))


if __name__ == '__main__':
    main()
