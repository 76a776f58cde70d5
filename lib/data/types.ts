/** One training or evaluation image with its reference captions (none for an unlabeled image). */
export interface Example {
  /** Stable identifier within its dataset (COCO image id, JSONL "id", relative path...). */
  id: string
  /** Absolute path of the image file. */
  image: string
  /** Reference captions; empty for an unlabeled image. */
  captions: string[]
}

/** Examples and where they came from (the file or folder read). */
export interface Dataset {
  examples: Example[]
  source: string
}
