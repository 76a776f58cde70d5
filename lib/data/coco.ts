// COCO captions: the official annotation files and Karpathy's split file.
import { resolve } from 'node:path'
import { SemicapError } from '../errors.js'
import type { Dataset, Example } from './types.js'
import { checkPath, compareStrings, isObject, readJsonFile } from './util.js'

export type KarpathySplit = 'train' | 'val' | 'test' | 'restval' | 'train+restval'
export const KARPATHY_SPLITS: readonly KarpathySplit[] = ['train', 'val', 'test', 'restval', 'train+restval']

const bad = (where: string, what: string) => new SemicapError('E_DATA', `${where}: ${what}`)

/**
 * Reads an official COCO captions file (`captions_train2017.json`: {images: [{id, file_name}], annotations:
 * [{image_id, caption}]}): one Example per image with all its captions (trimmed, in file order), ordered by
 * image id. Images without annotations get no captions. Image paths are `imagesDir/file_name`, made absolute.
 */
export async function readCocoCaptions(annotationsJson: string, imagesDir: string): Promise<Dataset> {
  checkPath(annotationsJson, 'readCocoCaptions', 'annotationsJson')
  checkPath(imagesDir, 'readCocoCaptions', 'imagesDir')
  const json = await readJsonFile(annotationsJson, 'readCocoCaptions')
  return cocoFromJson(json, annotationsJson, imagesDir)
}

/** @internal the parsed-JSON half of readCocoCaptions (dataset() parses once). */
export function cocoFromJson(json: unknown, file: string, imagesDir: string): Dataset {
  const where = `readCocoCaptions: ${file}`
  if (!isObject(json)) throw bad(where, 'expected a JSON object with "images" and "annotations"')
  const { images, annotations } = json
  if (!Array.isArray(images)) throw bad(where, 'missing "images" array')
  if (!Array.isArray(annotations)) throw bad(where, 'missing "annotations" array')
  const dir = resolve(imagesDir)
  const byId = new Map<string, { key: number | string; example: Example }>()
  images.forEach((img, i) => {
    if (!isObject(img)) throw bad(where, `images[${i}] is not an object`)
    const { id, file_name: fileName } = img
    if (typeof id !== 'number' && typeof id !== 'string') throw bad(where, `images[${i}] has no "id" (number or string)`)
    if (typeof fileName !== 'string' || fileName === '') throw bad(where, `images[${i}] has no "file_name"`)
    const sid = String(id)
    if (byId.has(sid)) throw bad(where, `images[${i}]: duplicate image id ${sid}`)
    byId.set(sid, { key: id, example: { id: sid, image: resolve(dir, fileName), captions: [] } })
  })
  annotations.forEach((ann, i) => {
    if (!isObject(ann)) throw bad(where, `annotations[${i}] is not an object`)
    const { image_id: imageId, caption } = ann
    if (typeof imageId !== 'number' && typeof imageId !== 'string') throw bad(where, `annotations[${i}] has no "image_id"`)
    if (typeof caption !== 'string') throw bad(where, `annotations[${i}] has no "caption" string`)
    const entry = byId.get(String(imageId))
    if (!entry) throw bad(where, `annotations[${i}] refers to image id ${String(imageId)}, which is not in "images"`)
    const text = caption.trim()
    if (text !== '') entry.example.captions.push(text)
  })
  const entries = [...byId.values()]
  entries.sort((a, b) =>
    typeof a.key === 'number' && typeof b.key === 'number' ? a.key - b.key : compareStrings(String(a.key), String(b.key)),
  )
  return { examples: entries.map((e) => e.example), source: resolve(file) }
}

/**
 * Reads Karpathy's split file (`dataset_coco.json`, also the Flickr8k/30k ones): {images: [{filepath?, filename,
 * split, cocoid? | imgid?, sentences: [{raw, tokens}]}]}. Keeps the images of `split` ('train+restval' is the usual
 * training set) in file order; captions are the `raw` sentences, trimmed; paths are `imagesRoot/filepath/filename`;
 * ids are the cocoid (else imgid, else filename).
 */
export async function readKarpathy(datasetCocoJson: string, imagesRoot: string, split: KarpathySplit): Promise<Dataset> {
  checkPath(datasetCocoJson, 'readKarpathy', 'datasetCocoJson')
  checkPath(imagesRoot, 'readKarpathy', 'imagesRoot')
  checkSplit(split)
  const json = await readJsonFile(datasetCocoJson, 'readKarpathy')
  return karpathyFromJson(json, datasetCocoJson, imagesRoot, split)
}

function checkSplit(split: unknown): asserts split is KarpathySplit {
  if (typeof split !== 'string') throw new TypeError(`readKarpathy: split must be a string, one of ${KARPATHY_SPLITS.join(', ')}`)
  if (!(KARPATHY_SPLITS as readonly string[]).includes(split)) {
    throw new RangeError(`readKarpathy: split must be one of ${KARPATHY_SPLITS.join(', ')}, got '${split}'`)
  }
}

/** @internal the parsed-JSON half of readKarpathy. */
export function karpathyFromJson(json: unknown, file: string, imagesRoot: string, split: KarpathySplit): Dataset {
  checkSplit(split)
  const where = `readKarpathy: ${file}`
  if (!isObject(json) || !Array.isArray(json.images)) throw bad(where, 'missing "images" array')
  const wanted = new Set(split === 'train+restval' ? ['train', 'restval'] : [split])
  const root = resolve(imagesRoot)
  const seen = new Map<string, number>()
  const examples: Example[] = []
  json.images.forEach((img: unknown, i: number) => {
    if (!isObject(img)) throw bad(where, `images[${i}] is not an object`)
    const { filepath, filename, split: s, sentences } = img
    if (typeof s !== 'string') throw bad(where, `images[${i}] has no "split"`)
    if (typeof filename !== 'string' || filename === '') throw bad(where, `images[${i}] has no "filename"`)
    if (filepath !== undefined && typeof filepath !== 'string') throw bad(where, `images[${i}]: "filepath" must be a string`)
    if (!Array.isArray(sentences)) throw bad(where, `images[${i}] has no "sentences" array`)
    if (!wanted.has(s)) return
    const captions: string[] = []
    sentences.forEach((sent: unknown, j: number) => {
      if (!isObject(sent) || typeof sent.raw !== 'string') throw bad(where, `images[${i}].sentences[${j}] has no "raw" string`)
      const text = sent.raw.trim()
      if (text !== '') captions.push(text)
    })
    const rawId = img.cocoid ?? img.imgid ?? filename
    if (typeof rawId !== 'number' && typeof rawId !== 'string') throw bad(where, `images[${i}]: "cocoid" must be a number or string`)
    const id = String(rawId)
    const prev = seen.get(id)
    if (prev !== undefined) throw bad(where, `images[${i}]: duplicate image id ${id} (also images[${prev}])`)
    seen.set(id, i)
    examples.push({ id, image: resolve(root, filepath ?? '', filename), captions })
  })
  return { examples, source: resolve(file) }
}
