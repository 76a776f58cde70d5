/**
 * GPT-2's reversible byte <-> printable-character table (`bytes_to_unicode` in openai/gpt-2 encoder.py), shared by the
 * GPT-2 and CLIP tokenizers. Byte-level BPE works on these characters so that vocab files stay printable text.
 */

/** The 256 bytes in GPT-2's vocabulary order: printable Latin-1 first, then the rest. Index = byte token id. */
export const BYTE_ORDER: readonly number[] = (() => {
  const order: number[] = []
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff)
  for (let b = 0; b < 256; b++) if (printable(b)) order.push(b)
  for (let b = 0; b < 256; b++) if (!printable(b)) order.push(b)
  return order
})()

/** byte -> its one-character symbol. */
export const BYTE_TO_UNICODE: readonly string[] = (() => {
  const table: string[] = new Array(256)
  let shifted = 0
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff)
    // Non-printable bytes move to 256+n so that every symbol is a visible, non-space character.
    table[b] = String.fromCharCode(printable ? b : 256 + shifted++)
  }
  return table
})()

/** symbol (one UTF-16 unit) -> byte. */
export const UNICODE_TO_BYTE: ReadonlyMap<string, number> = new Map(BYTE_TO_UNICODE.map((ch, b) => [ch, b]))

const encoder = new TextEncoder()
// fatal: false replaces invalid sequences with U+FFFD, like Python's errors="replace".
const decoder = new TextDecoder('utf-8', { fatal: false })

export function utf8Encode(text: string): Uint8Array {
  return encoder.encode(text)
}

export function utf8Decode(bytes: Uint8Array): string {
  return decoder.decode(bytes)
}

/** UTF-8 bytes of `text`, each mapped to its symbol, as one string (one char per byte). */
export function textToSymbols(text: string): string {
  return bytesToSymbols(encoder.encode(text))
}

export function bytesToSymbols(bytes: Uint8Array): string {
  let out = ''
  for (let i = 0; i < bytes.length; i++) out += BYTE_TO_UNICODE[bytes[i]!]
  return out
}

/** Inverse of bytesToSymbols; undefined if `symbols` holds a character outside the table (e.g. a special token). */
export function symbolsToBytes(symbols: string): Uint8Array | undefined {
  const out = new Uint8Array(symbols.length)
  for (let i = 0; i < symbols.length; i++) {
    const b = UNICODE_TO_BYTE.get(symbols[i]!)
    if (b === undefined) return undefined
    out[i] = b
  }
  return out
}

/** Joins byte arrays (token pieces) into one. */
export function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  let n = 0
  for (const p of parts) n += p.length
  const out = new Uint8Array(n)
  let at = 0
  for (const p of parts) {
    out.set(p, at)
    at += p.length
  }
  return out
}
