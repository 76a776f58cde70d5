// A small, strict multipart/form-data parser (RFC 7578 over RFC 2046), for a body already read into memory under a
// size limit. No dependency. What it accepts:
//
//   - the boundary from the Content-Type parameter (quoted or not; 1-70 characters of RFC 2046's bchars, not ending
//     in a space);
//   - an optional preamble before the first delimiter and an epilogue after the close delimiter (both ignored, as
//     RFC 2046 says), transport padding (spaces, tabs) after a delimiter;
//   - parts whose headers are CRLF-terminated `Name: value` lines (at most 8 KiB of headers per part), with a
//     `Content-Disposition: form-data` header carrying `name` and optionally `filename` (quoted-string or token).
//
// What it refuses: a missing or malformed boundary, a body that does not contain the first delimiter, a part
// without its closing delimiter, a header line without a colon, a part that is not form-data (400, MultipartError
// with status 400); more parts than maxParts, or a part larger than maxPartBytes (413).

export class MultipartError extends Error {
  constructor(
    readonly status: 400 | 413,
    readonly code: string,
    message: string,
  ) {
    super(message)
  }
}

export interface Part {
  /** The form field name (Content-Disposition name=...). */
  field: string
  /** The file name, when the part is a file (Content-Disposition filename=...). */
  filename?: string
  /** The part's Content-Type, lower-cased, when given. */
  contentType?: string
  /** The part's bytes (a view into the body, not a copy). */
  data: Buffer
}

export interface MultipartLimits {
  /** Most parts (default 16); more -> 413 E_TOO_MANY_PARTS. */
  maxParts?: number
  /** Largest part body (default 8 MiB); larger -> 413 E_TOO_LARGE. */
  maxPartBytes?: number
  /** Largest header block of one part (default 8 KiB); larger -> 400. */
  maxHeaderBytes?: number
}

const BCHARS = /^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$/

/** The boundary of a `multipart/form-data` content type, or undefined when the type is another one. Throws 400 when malformed. */
export function multipartBoundary(contentType: string | undefined): string | undefined {
  if (!contentType) return undefined
  const [type, ...params] = splitParams(contentType)
  if (type!.toLowerCase() !== 'multipart/form-data') return undefined
  let boundary: string | undefined
  for (const [k, v] of params) if (k === 'boundary') boundary = v
  if (boundary === undefined) throw new MultipartError(400, 'E_MULTIPART', 'multipart/form-data without a boundary parameter')
  if (!BCHARS.test(boundary)) throw new MultipartError(400, 'E_MULTIPART', 'malformed multipart boundary (1-70 characters of RFC 2046 bchars)')
  return boundary
}

/** `type; a=b; c="d"` -> [type, [a, b], [c, d]] (parameter names lower-cased). Throws 400 on a malformed parameter. */
function splitParams(header: string): [string, ...[string, string][]] {
  const semi = header.indexOf(';')
  const head = (semi < 0 ? header : header.slice(0, semi)).trim()
  const params: [string, string][] = []
  let i = semi < 0 ? header.length : semi + 1
  const n = header.length
  while (i < n) {
    while (i < n && (header[i] === ' ' || header[i] === '\t')) i++
    if (i >= n) break
    const eq = header.indexOf('=', i)
    if (eq < 0) throw new MultipartError(400, 'E_MULTIPART', `malformed header parameter in '${header.slice(0, 200)}'`)
    const name = header.slice(i, eq).trim().toLowerCase()
    if (!/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(name)) throw new MultipartError(400, 'E_MULTIPART', `malformed header parameter name '${name.slice(0, 50)}'`)
    i = eq + 1
    let value = ''
    if (header[i] === '"') {
      i++
      let closed = false
      while (i < n) {
        const c = header[i]!
        if (c === '\\' && i + 1 < n) {
          value += header[i + 1]
          i += 2
        } else if (c === '"') {
          closed = true
          i++
          break
        } else {
          value += c
          i++
        }
      }
      if (!closed) throw new MultipartError(400, 'E_MULTIPART', 'unterminated quoted string in a header parameter')
      while (i < n && (header[i] === ' ' || header[i] === '\t')) i++
      if (i < n && header[i] !== ';') throw new MultipartError(400, 'E_MULTIPART', 'junk after a quoted header parameter')
      i++
    } else {
      const end = header.indexOf(';', i)
      value = header.slice(i, end < 0 ? n : end).trim()
      i = end < 0 ? n : end + 1
    }
    params.push([name, value])
  }
  return [head, ...params]
}

const HEADER_END = Buffer.from('\r\n\r\n')

/** Splits a multipart body into its parts. Throws MultipartError (400 malformed, 413 over a limit). */
export function parseMultipart(body: Buffer, boundary: string, limits: MultipartLimits = {}): Part[] {
  const maxParts = limits.maxParts ?? 16
  const maxPartBytes = limits.maxPartBytes ?? 8 << 20
  const maxHeaderBytes = limits.maxHeaderBytes ?? 8 << 10
  const bad = (msg: string): never => {
    throw new MultipartError(400, 'E_MULTIPART', msg)
  }
  const dash = Buffer.from(`--${boundary}`)
  const delimiter = Buffer.from(`\r\n--${boundary}`)
  // The first delimiter: at the very start, or after a preamble (then preceded by CRLF).
  let pos: number
  if (body.subarray(0, dash.length).equals(dash)) pos = dash.length
  else {
    const i = body.indexOf(delimiter)
    if (i < 0) bad('the body does not contain the multipart boundary')
    pos = i + delimiter.length
  }
  const parts: Part[] = []
  for (;;) {
    // After a delimiter: `--` closes the body; otherwise optional transport padding, then CRLF.
    if (body[pos] === 0x2d && body[pos + 1] === 0x2d) break
    while (body[pos] === 0x20 || body[pos] === 0x09) pos++
    if (body[pos] !== 0x0d || body[pos + 1] !== 0x0a) bad('a multipart delimiter must be followed by CRLF or --')
    if (parts.length >= maxParts) throw new MultipartError(413, 'E_TOO_MANY_PARTS', `more than ${maxParts} parts`)
    // Headers: from after the delimiter line's CRLF to an empty line. `pos` is at that CRLF, so a part without
    // headers has the empty line right there.
    const headerEnd = body.indexOf(HEADER_END, pos)
    if (headerEnd < 0) bad('a multipart part has no end of headers (an empty line)')
    if (headerEnd - pos > maxHeaderBytes) bad(`a multipart part's headers exceed ${maxHeaderBytes} bytes`)
    const headerText = body.subarray(pos + 2, headerEnd).toString('latin1')
    const start = headerEnd + 4
    const end = body.indexOf(delimiter, start)
    if (end < 0) bad('a multipart part is not closed by a boundary delimiter')
    if (end - start > maxPartBytes) throw new MultipartError(413, 'E_TOO_LARGE', `a multipart part exceeds the limit of ${maxPartBytes} bytes`)
    const headers = new Map<string, string>()
    if (headerText.length > 0) {
      for (const line of headerText.split('\r\n')) {
        const colon = line.indexOf(':')
        if (colon <= 0) bad(`malformed multipart header line '${line.slice(0, 80)}'`)
        const name = line.slice(0, colon).trim().toLowerCase()
        if (!/^[!#$%&'*+\-.^_`|~0-9a-z]+$/.test(name)) bad(`malformed multipart header name '${name.slice(0, 50)}'`)
        if (headers.has(name)) bad(`duplicate multipart header '${name}'`)
        headers.set(name, line.slice(colon + 1).trim())
      }
    }
    const disposition = headers.get('content-disposition')
    if (disposition === undefined) bad('a multipart part has no Content-Disposition header')
    const [kind, ...params] = splitParams(disposition!)
    if (kind.toLowerCase() !== 'form-data') bad(`a multipart part's Content-Disposition is '${kind.slice(0, 50)}', not form-data`)
    const p = new Map(params)
    const field = p.get('name')
    if (field === undefined) bad('a multipart part has no name in its Content-Disposition')
    const ct = headers.get('content-type')
    parts.push({ field: field!, filename: p.get('filename'), contentType: ct === undefined ? undefined : ct.toLowerCase(), data: body.subarray(start, end) })
    pos = end + delimiter.length
    if (pos > body.length) bad('truncated multipart body')
  }
  return parts
}
