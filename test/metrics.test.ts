import { describe, expect, it } from 'vitest'
import { SemicapError } from '../lib/errors.js'
import {
  bleu,
  CiderD,
  ciderD,
  ciderDocumentFrequency,
  clipScore,
  clipScores,
  cosine,
  diversityStats,
  hasRepetition,
  lcsLength,
  meanLength,
  novelCaptionShare,
  ptbTokenize,
  refClipScore,
  repetitionRate,
  retrievalRecallAtK,
  rougeL,
  scoreCaptions,
  tokenizeCaption,
  vocabularySize,
} from '../lib/metrics/index.js'

const f32 = (...xs: number[]): Float32Array => Float32Array.from(xs)

describe('tokenizeCaption (PTBTokenizer -lowerCase + pycocoevalcap punctuation removal)', () => {
  it.each([
    ["A dog's toy.", "a dog 's toy"],
    ["I don't know, can't you see?", "i do n't know ca n't you see"],
    ['He cannot go!', 'he can not go'],
    ['She said "hello" to the 2-year-old.', 'she said hello to the 2-year-old'],
    ["It costs $3.50 at Mr. Smith's, etc.", "it costs $ 3.50 at mr. smith 's etc."],
    ["They're here; we'll see: you've won", "they 're here we 'll see you 've won"],
    ['a cat\u2026 on a mat \u2014 nice -- really', 'a cat on a mat nice really'],
    ['A T-shirt and/or jeans?!', 'a t-shirt and\\/or jeans ?!'],
    ['  Two   DOGS\nplaying  ', 'two dogs playing'],
    ['the U.S. flag, 1,000 birds', 'the u.s. flag 1,000 birds'],
    ["the dogs' bowls at 5 o'clock", 'the dogs bowls at 5 o\'clock'],
    // pycocoevalcap quirk: lower-casing makes -LRB- into -lrb-, which its list does not remove.
    ['A man (in red) rides.', 'a man -lrb- in red -rrb- rides'],
    ['', ''],
  ])('%j -> %j', (raw, expected) => {
    expect(tokenizeCaption(raw)).toBe(expected)
  })

  it('keeps the punctuation tokens before removal', () => {
    expect(ptbTokenize('Hello, world... "Hi"')).toEqual(['hello', ',', 'world', '...', '``', 'hi', "''"])
  })

  it('rejects non-strings', () => {
    expect(() => ptbTokenize(3 as unknown as string)).toThrow(TypeError)
  })
})

describe('bleu (pycocoevalcap BleuScorer, option closest)', () => {
  it('applies the brevity penalty with the closest reference length', () => {
    // cand "a cat on the mat" (5 words); ref lengths 6, 9, 3 -> closest is 6 (shortest would be 3,
    // average 6): BP = exp(1 - 6/5) = exp(-0.2).
    // Clipped matches: 1-grams 5/5, 2-grams 4/4 ("a cat","cat on","on the","the mat"),
    // 3-grams 3/3 ("a cat on","cat on the" from ref 2, "on the mat" from ref 1),
    // 4-grams 1/2 ("a cat on the" yes, "cat on the mat" in no reference).
    const r = bleu(['a cat on the mat'], [['a cat is on the mat', 'there is a cat on the red mat today', 'a small cat']])
    const bp = Math.exp(-0.2)
    expect(r.bleu[0]).toBeCloseTo(bp, 8)
    expect(r.bleu[1]).toBeCloseTo(bp, 8)
    expect(r.bleu[2]).toBeCloseTo(bp, 8)
    expect(r.bleu[3]).toBeCloseTo(0.5 ** 0.25 * bp, 8)
    expect(r.testLength).toBe(5)
    expect(r.referenceLength).toBe(6)
    // One image: per-image equals corpus.
    for (let k = 0; k < 4; k++) expect(r.perImage[k]![0]).toBeCloseTo(r.bleu[k]!, 12)
  })

  it('breaks a tie in reference length towards the shorter reference', () => {
    // cand 5 words, refs 4 and 6 words: both 1 away; min((|l-5|, l)) picks 4 -> ratio 5/4, no penalty.
    const r = bleu(['a b c d e'], [['a b c d', 'a b c d e f']])
    expect(r.referenceLength).toBe(4)
    for (const b of r.bleu) expect(b).toBeCloseTo(1, 8)
  })

  it('has no penalty for a caption longer than every reference, and tiny/small for 0 matches', () => {
    // cand 7 words, refs 3 and 5 -> closest 5, ratio 7/5 > 1.
    // 1-grams: a dog runs on the grass match, green not: 6/7. 2-grams: "a dog","dog runs","runs on": 3/6.
    // 3-grams: "a dog runs" (ref 1), "dog runs on" (ref 2): 2/5. 4-grams: 0/4.
    const r = bleu(['a dog runs on the green grass'], [['a dog runs', 'the dog runs on grass']])
    // (With the constants: p1 = (6 + 1e-15) / (7 + 1e-9), 1.2e-10 below 6/7.)
    expect(r.bleu[0]).toBeCloseTo(6 / 7, 8)
    expect(r.bleu[1]).toBeCloseTo(Math.sqrt(3 / 7), 8)
    expect(r.bleu[2]).toBeCloseTo(((6 / 7) * (1 / 2) * (2 / 5)) ** (1 / 3), 8)
    // 0 matches give (0 + 1e-15) / (4 + 1e-9), not 0: BLEU-4 is about 8.1e-5.
    const b4 = ((6 / 7) * (1 / 2) * (2 / 5) * (1e-15 / (4 + 1e-9))) ** (1 / 4)
    expect(r.bleu[3]! / b4).toBeCloseTo(1, 6)
    expect(r.bleu[3]).toBeGreaterThan(8e-5)
  })

  it('scores an empty caption 0 per image while the corpus sums lengths', () => {
    // Corpus: testlen 2 + 0, reflen 2 + 2 -> ratio 1/2 -> BP = exp(1 - 2) = 1/e.
    // guess/correct: 1-grams 2/2, 2-grams 1/1, 3-grams 0/0 -> 1e-15/1e-9 = 1e-6, 4-grams 1e-6.
    const r = bleu(['a cat', ''], [['a cat'], ['a dog']])
    const e1 = Math.exp(-1)
    expect(r.bleu[0]).toBeCloseTo(e1, 8)
    expect(r.bleu[1]).toBeCloseTo(e1, 8)
    expect(r.bleu[2]! / (1e-6 ** (1 / 3) * e1)).toBeCloseTo(1, 6)
    expect(r.bleu[3]! / (1e-12 ** (1 / 4) * e1)).toBeCloseTo(1, 6)
    // Per image: the matching caption has BLEU-3 = (1e-6)^(1/3) = 0.01, the empty one exactly 0.
    expect(r.perImage[0]![0]).toBeCloseTo(1, 8)
    expect(r.perImage[2]![0]).toBeCloseTo(0.01, 8)
    expect(r.perImage.map((col) => col[1])).toEqual([0, 0, 0, 0])
  })

  it('handles a single reference', () => {
    // cand 3 words vs one 6-word ref: BP = exp(1 - 6/3) = 1/e; 1..3-grams all match; no 4-grams.
    const r = bleu(['the cat sat'], [['the cat sat on the mat']])
    expect(r.bleu[0]).toBeCloseTo(Math.exp(-1), 8)
    expect(r.bleu[2]).toBeCloseTo(Math.exp(-1), 8)
    expect(r.bleu[3]! / (1e-6 ** 0.25 * Math.exp(-1))).toBeCloseTo(1, 6)
  })

  it('validates its input', () => {
    expect(() => bleu(['a'], [])).toThrow(SemicapError)
    expect(() => bleu(['a'], [[]])).toThrow(/no reference/)
    expect(() => bleu(['a'], [['a']], { n: 0 })).toThrow(RangeError)
  })
})

describe('rougeL', () => {
  it('computes an LCS', () => {
    // Classic: LCS(ABCBDAB, BDCABA) = 4 (e.g. BCBA).
    expect(lcsLength([...'ABCBDAB'], [...'BDCABA'])).toBe(4)
    expect(lcsLength([], ['a'])).toBe(0)
  })

  it('takes max precision and max recall over references, possibly from different ones', () => {
    // cand [a man riding a red bike] (6).
    // ref 1 [a red bike] (3): LCS 3 -> P 1/2, R 1.
    // ref 2 (9 tokens): LCS "a man riding a bike" = 5 -> P 5/6, R 5/9.
    // ref 3 [zebra]: LCS 0 -> P 0, R 0 (the maxima must not come from the last reference).
    // Pmax 5/6, Rmax 1: F = 2.44 * 5/6 / (1 + 1.44 * 5/6) = (61/30) / (11/5) = 61/66.
    const r = rougeL(
      ['a man riding a red bike', 'zebra'],
      [['a red bike', 'a man is riding a bike down the road', 'zebra'], ['a horse']],
    )
    expect(r.perImage[0]).toBeCloseTo(61 / 66, 12)
    expect(r.perImage[1]).toBe(0)
    expect(r.rougeL).toBeCloseTo(61 / 132, 12)
  })

  it('scores an empty caption 0', () => {
    expect(rougeL([''], [['a b']]).rougeL).toBe(0)
  })
})

describe('ciderD', () => {
  // Two images. refLen = log 2; df: "a" and "sits" occur in both images (idf 0), the rest in one
  // (idf log 2 =: l, which cancels in every cosine below).
  // Image 1: cand "a cat cat", refs "a cat sits", "the cat".
  //   cand vectors: 1-g {a:0, cat:2l}, 2-g {a cat:l, cat cat:l}, 3-g {a cat cat:l}; bigram count 2.
  //   vs "a cat sits" (1-g {a:0,cat:l,sits:0}, 2-g {a cat:l, cat sits:l}, 3-g {a cat sits:l}, 2 bigrams):
  //     n=1 clipped: min(2l,l)*l / (2l * l) = 1/2; n=2: l*l / (sqrt2 l * sqrt2 l) = 1/2; n=3: 0; n=4: 0;
  //     delta 0 -> sum 1.
  //   vs "the cat" (1-g {the:l, cat:l}, 2-g {the cat:l}, 1 bigram):
  //     n=1: l*l / (2l * sqrt2 l) = 1/(2 sqrt2); others 0; delta 1 -> times exp(-1/72).
  //   score = 10 * (1 + exp(-1/72)/(2 sqrt2)) / 4 / 2.
  // Image 2: cand "a dog" (1-g {a:0,dog:l}, 2-g {a dog:l}, 1 bigram), ref "a dog sits" (2 bigrams):
  //   n=1: 1; n=2: l*l / (l * sqrt2 l) = 1/sqrt2; delta -1 -> score = 10 * (1 + 1/sqrt2) exp(-1/72) / 4.
  const refs = [['a cat sits', 'the cat'], ['a dog sits']]
  const g = Math.exp(-1 / 72)
  const s1 = (10 * (1 + g / (2 * Math.SQRT2))) / 8
  const s2 = (10 * (1 + Math.SQRT1_2) * g) / 4

  it('matches a hand-computed 2-image corpus', () => {
    const r = ciderD(['a cat cat', 'a dog'], refs)
    expect(r.perImage[0]).toBeCloseTo(s1, 10)
    expect(r.perImage[1]).toBeCloseTo(s2, 10)
    expect(r.ciderD).toBeCloseTo((s1 + s2) / 2, 10)
  })

  it('counts document frequency per image and refLen = log(images)', () => {
    const df = ciderDocumentFrequency(refs)
    expect(df.refLen).toBeCloseTo(Math.log(2), 15)
    expect(df.df.get('a')).toBe(2)
    expect(df.df.get('cat')).toBe(1) // twice in image 1's references, still one document
    expect(df.df.get('a cat sits')).toBe(1)
    expect(df.df.has('cat cat')).toBe(false)
  })

  it('uses external document frequencies when given', () => {
    // External corpus of 3 images: df a=3, cat=2, "the" absent; refLen = log 3.
    // cand "a cat" vs ref "the cat": weights a:0, cat:w = log3 - log2, the: log3 - log(max(1,0)) = log3.
    // n=1: w*w / (w * sqrt(log3^2 + w^2)); n>=2 nothing in common; delta 0 -> score = 10/4 * that.
    const ext = ciderDocumentFrequency([['a cat'], ['a cat'], ['a dog']])
    const w = Math.log(3) - Math.log(2)
    const expected = (10 / 4) * (w / Math.sqrt(Math.log(3) ** 2 + w * w))
    expect(new CiderD([['the cat']], { documentFrequency: ext }).scoreImage(0, 'a cat')).toBeCloseTo(expected, 12)
    // With its own one-image corpus every idf is log 1 - log 1 = 0: the score is 0.
    expect(ciderD(['a cat'], [['the cat']]).ciderD).toBe(0)
  })

  it('gives 5 to a perfect 2-word caption in a 2-image corpus (only n=1,2 exist)', () => {
    const r = ciderD(['a cat', 'a dog'], [['a cat'], ['a dog']])
    expect(r.perImage[0]).toBeCloseTo(5, 12)
    expect(r.perImage[1]).toBeCloseTo(5, 12)
  })

  it('evaluates 5,000 images x 5 references', () => {
    // Deterministic synthetic corpus (mulberry32), captions of 8-12 words from a 1,000-word vocabulary.
    let seed = 12345
    const rand = (): number => {
      seed = (seed + 0x6d2b79f5) | 0
      let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296
    }
    const vocab = Array.from({ length: 1000 }, (_, i) => `w${Math.floor(1000 * (i / 1000) ** 2)}`)
    const sentence = (): string =>
      Array.from({ length: 8 + Math.floor(rand() * 5) }, () => vocab[Math.floor(rand() * vocab.length)]).join(' ')
    const references = Array.from({ length: 5000 }, () => Array.from({ length: 5 }, sentence))
    const candidates = references.map((r, i) => (i % 2 ? sentence() : r[0]!))
    const t0 = performance.now()
    const r = ciderD(candidates, references)
    const ms = performance.now() - t0
    console.log(`CIDEr-D 5000 images x 5 refs: ${ms.toFixed(0)} ms (mean ${r.ciderD.toFixed(3)})`)
    expect(r.perImage).toHaveLength(5000)
    expect(r.perImage.every(Number.isFinite)).toBe(true)
    // Copies of a reference score well above random sentences.
    const even = r.perImage.filter((_, i) => i % 2 === 0)
    const odd = r.perImage.filter((_, i) => i % 2 === 1)
    expect(Math.min(...even)).toBeGreaterThan(Math.max(...odd))
  })
})

describe('scoreCaptions', () => {
  it('tokenizes raw captions and reports corpus and per-image scores', () => {
    // Raw versions of the CIDEr example above: after normalisation they are the same token strings.
    const r = scoreCaptions({
      candidates: new Map<string | number, string>([[1, 'A cat, cat.'], [2, 'a DOG']]),
      references: { 1: ['A cat sits.', 'The cat!'], 2: ['A dog sits'], 3: ['ignored: no candidate'] },
    })
    expect(r.perImage['1']!.ciderD).toBeCloseTo(s1Cider, 10)
    expect(r.perImage['2']!.ciderD).toBeCloseTo(s2Cider, 10)
    expect(r.ciderD).toBeCloseTo((s1Cider + s2Cider) / 2, 10)
    const direct = bleu(['a cat cat', 'a dog'], [['a cat sits', 'the cat'], ['a dog sits']])
    expect(r.bleu).toEqual(direct.bleu)
    expect(r.perImage['2']!.bleu).toEqual(direct.perImage.map((c) => c[1]))
    // Image 2: cand [a dog] vs [a dog sits]: LCS 2, P 1, R 2/3 -> F = 2.44 * 2/3 / (2/3 + 1.44).
    expect(r.perImage['2']!.rougeL).toBeCloseTo((2.44 * (2 / 3)) / (2 / 3 + 1.44), 12)
  })

  it('rejects a candidate without references', () => {
    expect(() => scoreCaptions({ candidates: { a: 'x' }, references: { b: ['x'] } })).toThrow(SemicapError)
    expect(() => scoreCaptions({ candidates: {}, references: {} })).toThrow(/no candidates/)
  })
})
const s1Cider = (10 * (1 + Math.exp(-1 / 72) / (2 * Math.SQRT2))) / 8
const s2Cider = (10 * (1 + Math.SQRT1_2) * Math.exp(-1 / 72)) / 4

describe('diversity', () => {
  it('flags repeated bigrams and back-to-back words', () => {
    expect(hasRepetition(['a', 'man', 'and', 'a', 'man'])).toBe(true)
    expect(hasRepetition(['a', 'man', 'and', 'a', 'woman'])).toBe(false)
    expect(hasRepetition(['a', 'dog', 'dog', 'runs'])).toBe(true)
    expect(hasRepetition(['a', 'dog', 'dog', 'runs'], 2, false)).toBe(false)
    expect(hasRepetition(['a', 'b', 'c', 'a', 'b', 'c'], 3)).toBe(true)
    expect(hasRepetition(['a', 'b', 'a', 'b'], 3)).toBe(false)
    expect(repetitionRate(['A man and a man.', 'A man and a woman.', 'a dog dog', 'a cat'])).toBe(0.5)
  })

  it('counts vocabulary, novelty and length after normalisation', () => {
    expect(vocabularySize(['A dog.', 'a cat, a dog'])).toBe(3)
    expect(novelCaptionShare(['A dog.', 'a cat'], ['a dog'])).toBe(0.5)
    expect(meanLength(['A dog.', 'a big cat'])).toBe(2.5)
    expect(diversityStats(['A dog.', 'a dog dog'], { trainingCaptions: ['A DOG'] })).toEqual({
      vocabularySize: 2,
      repetitionRate: 0.5,
      meanLength: 2.5,
      novelShare: 0.5,
    })
  })
})

describe('CLIP-S / RefCLIP-S', () => {
  it('computes CLIP-S = 2.5 * max(cos, 0)', () => {
    expect(cosine(f32(1, 0), f32(3, 4))).toBeCloseTo(0.6, 7)
    expect(clipScore(f32(1, 0), f32(3, 4))).toBeCloseTo(1.5, 6)
    expect(clipScore(f32(1, 0), f32(-1, 0))).toBe(0)
    expect(clipScore(f32(1, 0), f32(3, 4), 1)).toBeCloseTo(0.6, 6)
  })

  it('computes RefCLIP-S as the harmonic mean with the unscaled reference part', () => {
    // caption (0.6, 0.8): cos with (0,1) = 0.8, with (1,0) = 0.6 -> refS 0.8; CLIP-S 1.5.
    // RefCLIP-S = 2 * 1.5 * 0.8 / 2.3 = 24/23.
    const r = refClipScore(f32(1, 0), f32(3, 4), [f32(0, 1), f32(1, 0)])
    expect(r.refS).toBeCloseTo(0.8, 6)
    expect(r.refClipS).toBeCloseTo(24 / 23, 6)
    // Every reference opposite: refS clipped to 0, harmonic mean 0; 0/0 also gives 0.
    expect(refClipScore(f32(1, 1), f32(1, 0), [f32(-1, 0)]).refClipS).toBe(0)
    expect(refClipScore(f32(-1, 0), f32(1, 0), [f32(-1, 0)]).refClipS).toBe(0)
    const many = clipScores([f32(1, 0), f32(0, 1)], [f32(3, 4), f32(0, 1)], { references: [[f32(0, 1)], [f32(0, 2)]] })
    // Image 2: CLIP-S 2.5, refS 1 -> 2 * 2.5 / 3.5 = 10/7.
    expect(many.clipS).toBeCloseTo((1.5 + 2.5) / 2, 6)
    expect(many.refClipS).toBeCloseTo((24 / 23 + 10 / 7) / 2, 6)
  })

  it('rejects mismatched shapes', () => {
    expect(() => cosine(f32(1), f32(1, 2))).toThrow(SemicapError)
    expect(() => refClipScore(f32(1), f32(1), [])).toThrow(SemicapError)
    expect(() => cosine([1] as unknown as Float32Array, f32(1))).toThrow(TypeError)
  })
})

describe('retrievalRecallAtK', () => {
  it("ranks each caption's own image among all images", () => {
    const images = [f32(1, 0, 0), f32(0, 1, 0), f32(0, 0, 1)]
    // Caption 0 is closest to image 0 (rank 1); caption 1 to image 0 then 1 (rank 2);
    // caption 2 ranks images 0, 1, 2 (rank 3).
    const captions = [f32(1, 0.1, 0), f32(0.9, 0.5, 0), f32(0.5, 0.3, 0.1)]
    const r = retrievalRecallAtK(captions, images, [1, 2, 3])
    expect(r[0]).toBeCloseTo(1 / 3, 12)
    expect(r[1]).toBeCloseTo(2 / 3, 12)
    expect(r[2]).toBe(1)
  })

  it('counts ties against the caption', () => {
    const same = [f32(1, 1), f32(1, 1), f32(1, 1)]
    expect(retrievalRecallAtK(same, same, [1, 2, 3])).toEqual([0, 0, 1])
  })
})
