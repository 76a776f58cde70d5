export type { Example, Dataset } from './types.js'
export { readCocoCaptions, readKarpathy, KARPATHY_SPLITS, type KarpathySplit } from './coco.js'
export { readJsonl } from './jsonl.js'
export { readImageFolder, IMAGE_EXTENSIONS, type ImageFolderOptions } from './folder.js'
export { splitLabeled, dataset, mulberry32, type SplitOptions, type LabeledSplit, type DatasetOptions } from './split.js'
export {
  cachedImageFeatures,
  fileSha256,
  FEATURE_CACHE_FORMAT,
  type FeatureEncoder,
  type FeatureCacheOptions,
  type CachedFeatures,
} from './features.js'
