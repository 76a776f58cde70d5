export { BYTE_ORDER, BYTE_TO_UNICODE, UNICODE_TO_BYTE, bytesToSymbols, symbolsToBytes, textToSymbols } from './bytes.js'
export { BytePairEncoding, parseMergesTxt, type Merge } from './bpe.js'
export { ClipTokenizer, CLIP_PATTERN, clipNormalize, htmlUnescape, type ClipBatch, type ClipEncodeBatchOptions } from './clip.js'
export {
  Gpt2Tokenizer,
  GPT2_EOS_TOKEN,
  GPT2_PATTERN,
  mergesFromRanks,
  type DecodeOptions,
  type EncodeOptions,
  type Gpt2LoadOptions,
  type Gpt2TokenizerOptions,
} from './gpt2.js'
export { saveGpt2TokenizerFiles, trainByteLevelBpe, type TrainBpeOptions, type TrainedBpe } from './train.js'
