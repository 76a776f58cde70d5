/**
 * A self-contained HTML evaluation report: one file, no external resources (thumbnails must be
 * data: URIs), inline CSS, inline JS for sorting and filtering, inline SVG for training curves.
 * All text is escaped: captions, facts, labels and notes come from models and datasets and are untrusted.
 * Layout: title, claims with their verdicts, notes, corpus metrics, training curves (one group per stage),
 * then one row per image: the image (shown `imageSize` px wide, pixelated when scaled up), every
 * captioner's caption side by side with the facts it states marked ✓ (holds) or ✗ (does not), the
 * references and the per-image scores.
 * The rows are written already sorted (worst first by `sortBy`) and all visible, so the page reads
 * right without JS; the script re-sorts on header clicks, enables the filter buttons (each shows only
 * its rows and says how many) and marks <html data-report-ready="1"> when it has run.
 */
import { SemicapError } from '../errors.js'

/** One fact a caption states, checked against the truth (e.g. a scene graph): shown ✓ when it holds, ✗ when not. */
export interface ReportFact {
  text: string
  holds: boolean
}

export interface ReportRow {
  /** Image id, shown in the first column; the key of `ReportFilter.rowIds`. */
  id: string
  /** data:image/...;base64,... URI of a thumbnail. */
  thumbnail?: string
  /** Captioner name -> generated caption (several captioners side by side). */
  captions: Readonly<Record<string, string>>
  /** Captioner name (a key of `captions`) -> the facts its caption states, each marked true or false. */
  facts?: Readonly<Record<string, readonly ReportFact[]>>
  references?: readonly string[]
  /** Score column -> value, e.g. { 'ours CIDEr-D': 0.8, 'base CIDEr-D': 0.5 }. */
  scores?: Readonly<Record<string, number>>
}

export interface TrainingLogEntry {
  step: number
  loss?: number
  reward?: number
  [metric: string]: number | undefined
}

/** A named subset of the rows, e.g. "where (c) beats (a)": a button that shows only these rows (with JS). */
export interface ReportFilter {
  /** Non-empty and unique among the filters (any text: it is escaped). */
  id: string
  label: string
  /** Ids of rows (ReportRow.id) in the subset, each a row of the report. */
  rowIds: readonly string[]
}

/** A claim the report makes, with its verdict ("holds in 6 of 6 runs", "within noise", ...), shown at the top. */
export interface ReportClaim {
  text: string
  verdict: string
}

export interface ReportInput {
  title: string
  /** Claims and their verdicts, listed at the top. */
  claims?: readonly ReportClaim[]
  /** Paragraphs of plain text (escaped), after the claims. */
  notes?: readonly string[]
  /** Captioner name -> corpus metric -> value. */
  summary?: Readonly<Record<string, Readonly<Record<string, number>>>>
  rows: readonly ReportRow[]
  /** Displayed width of each row's image in CSS px (default 192); small images are scaled up pixelated. */
  imageSize?: number
  /** Row subsets offered as filters, after the default "all". */
  filters?: readonly ReportFilter[]
  /** When given, line plots of loss, reward and every other numeric field over `step`. */
  trainingLog?: readonly TrainingLogEntry[]
  /** Stage label -> its training log: one group of plots per stage, in key order (after `trainingLog`'s). */
  trainingLogs?: Readonly<Record<string, readonly TrainingLogEntry[]>>
  /** Score column of the default order (default: the first score column). */
  sortBy?: string
  /** Default order ascending, i.e. worst first for higher-is-better scores (default true). */
  ascending?: boolean
}

const ESC: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }
/** Escapes text for element content and quoted attribute values. */
export function escapeHtml(s: unknown): string {
  return String(s).replace(/[&<>"']/g, (c) => ESC[c]!)
}

const DATA_URI = /^data:image\/(?:png|jpeg|gif|webp|avif|svg\+xml);base64,[A-Za-z0-9+/=\s]*$/

function fmt(v: number | undefined): string {
  if (v === undefined || !Number.isFinite(v)) return '–'
  const a = Math.abs(v)
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(2) : v.toFixed(a >= 100 ? 1 : 4)
}

/** Union of keys in first-seen order. */
function keysOf(objs: Iterable<Readonly<Record<string, unknown>> | undefined>): string[] {
  const seen = new Set<string>()
  for (const o of objs) if (o) for (const k of Object.keys(o)) seen.add(k)
  return [...seen]
}

function summaryTable(summary: NonNullable<ReportInput['summary']>): string {
  const names = Object.keys(summary)
  if (names.length === 0) return ''
  const metrics = keysOf(names.map((n) => summary[n]))
  const head = metrics.map((m) => `<th>${escapeHtml(m)}</th>`).join('')
  const body = names
    .map((n) => `<tr><th>${escapeHtml(n)}</th>${metrics.map((m) => `<td>${fmt(summary[n]![m])}</td>`).join('')}</tr>`)
    .join('\n')
  return `<h2>Corpus metrics</h2>\n<table class="summary"><thead><tr><th>captioner</th>${head}</tr></thead><tbody>\n${body}\n</tbody></table>`
}

/** Centred moving average over `w` points (shrinking at the ends). */
function smooth(ys: readonly number[], w: number): number[] {
  const h = Math.floor(w / 2)
  return ys.map((_, i) => {
    const lo = Math.max(0, i - h), hi = Math.min(ys.length, i + h + 1)
    let sum = 0
    for (let k = lo; k < hi; k++) sum += ys[k]!
    return sum / (hi - lo)
  })
}

/** Points from which a noisy curve also gets a moving average drawn over it. */
const SMOOTH_FROM = 30

/** One inline-SVG line plot of y over step (non-finite points skipped). */
function linePlot(name: string, pts: [number, number][]): string {
  const W = 360, H = 200, L = 56, R = 12, T = 24, B = 30
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1])
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)]
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1]
  if (y0 === y1) [y0, y1] = [y0 - 1, y1 + 1]
  const sx = (x: number): number => L + ((x - x0) / (x1 - x0)) * (W - L - R)
  const sy = (y: number): number => H - B - ((y - y0) / (y1 - y0)) * (H - T - B)
  const line = (yv: readonly number[]) => xs.map((x, i) => `${sx(x).toFixed(1)},${sy(yv[i]!).toFixed(1)}`).join(' ')
  const dots = pts.length === 1 ? `<circle cx="${sx(xs[0]!)}" cy="${sy(ys[0]!)}" r="3" fill="#1f6feb"/>` : ''
  const noisy = pts.length >= SMOOTH_FROM
  const avg = noisy
    ? `\n<polyline class="smooth" points="${line(smooth(ys, Math.max(3, Math.round(pts.length / 15))))}" fill="none" stroke="#0b3d91" stroke-width="2"/>`
    : ''
  return `<figure class="plot"><svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="${escapeHtml(name)} over steps">
<rect x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" fill="#fafafa" stroke="#ccc"/>
<text x="${W / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">${escapeHtml(name)}</text>
<text x="${L - 4}" y="${T + 10}" text-anchor="end" font-size="10">${fmt(y1)}</text>
<text x="${L - 4}" y="${H - B}" text-anchor="end" font-size="10">${fmt(y0)}</text>
<text x="${L}" y="${H - B + 14}" font-size="10">${Number.isInteger(x0) ? x0 : fmt(x0)}</text>
<text x="${W - R}" y="${H - B + 14}" text-anchor="end" font-size="10">${Number.isInteger(x1) ? x1 : fmt(x1)}</text>
<text x="${(L + W - R) / 2}" y="${H - 4}" text-anchor="middle" font-size="10">step</text>
<polyline points="${line(ys)}" fill="none" stroke="${noisy ? '#9ab8e8' : '#1f6feb'}" stroke-width="1.5"/>${avg}${dots}
</svg></figure>`
}

/** The plots of one log (loss, reward, then every other numeric field in first-seen order), or ''. */
function plotGroup(log: readonly TrainingLogEntry[]): string {
  const series = keysOf(log).filter((k) => k !== 'step')
  series.sort((a, b) => rank(a) - rank(b))
  const plots = series
    .map((k) => {
      const pts = log
        .filter((e) => Number.isFinite(e.step) && typeof e[k] === 'number' && Number.isFinite(e[k]))
        .map((e) => [e.step, e[k]!] as [number, number])
      return pts.length ? linePlot(k, pts) : ''
    })
    .filter((p) => p !== '')
    .join('\n')
  return plots ? `<div class="plots">\n${plots}\n</div>` : ''
}
const rank = (k: string): number => (k === 'loss' ? 0 : k === 'reward' ? 1 : 2)

function trainingSection(log: ReportInput['trainingLog'], logs: ReportInput['trainingLogs']): string {
  const parts: string[] = []
  if (log?.length) {
    const g = plotGroup(log)
    if (g) parts.push(g)
  }
  for (const [stage, entries] of Object.entries(logs ?? {})) {
    const g = plotGroup(entries)
    parts.push(`<section class="stage" data-stage="${escapeHtml(stage)}"><h3>${escapeHtml(stage)}</h3>\n${g || '<p class="empty">no logged values</p>'}\n</section>`)
  }
  return parts.length ? `<h2>Training</h2>\n${parts.join('\n')}` : ''
}

function claimsSection(claims: readonly ReportClaim[]): string {
  if (claims.length === 0) return ''
  const body = claims.map((c) => `<tr><td>${escapeHtml(c.text)}</td><td class="verdict">${escapeHtml(c.verdict)}</td></tr>`).join('\n')
  return `<h2>Claims</h2>\n<table class="claims"><thead><tr><th>claim</th><th>verdict</th></tr></thead><tbody>\n${body}\n</tbody></table>`
}

function notesSection(notes: readonly string[]): string {
  return notes.length ? `<section class="notes">\n${notes.map((n) => `<p>${escapeHtml(n)}</p>`).join('\n')}\n</section>` : ''
}

function factList(facts: readonly ReportFact[]): string {
  if (facts.length === 0) return '<p class="nofacts">no facts stated</p>'
  const items = facts
    .map((f) =>
      f.holds
        ? `<li class="fact fact-true" title="holds"><span class="mark" aria-hidden="true">✓</span><span class="vh">true: </span>${escapeHtml(f.text)}</li>`
        : `<li class="fact fact-false" title="does not hold"><span class="mark" aria-hidden="true">✗</span><span class="vh">false: </span>${escapeHtml(f.text)}</li>`,
    )
    .join('')
  return `<ul class="facts">${items}</ul>`
}

const own = (o: object | undefined, k: string): boolean => o !== undefined && Object.prototype.hasOwnProperty.call(o, k)

/** The captions cell's grid: one block per captioner (same order in every row), its caption and its facts. */
function captionBlocks(r: ReportRow, captioners: readonly string[]): string {
  const blocks = captioners.map((n) => {
    if (!own(r.captions, n)) return `<div class="cap missing"><div class="who">${escapeHtml(n)}</div><p class="text">–</p></div>`
    const facts = own(r.facts, n) ? r.facts![n]! : undefined
    let tally = ''
    if (facts) {
      const t = facts.filter((f) => f.holds).length
      tally = ` <span class="tally">${t} true, ${facts.length - t} false</span>`
    }
    const capText = `<p class="text">${escapeHtml(r.captions[n])}</p>`
    return `<div class="cap"><div class="who">${escapeHtml(n)}${tally}</div>${capText}${facts ? factList(facts) : ''}</div>`
  })
  return `<div class="caps">${blocks.join('')}</div>`
}

function filterBar(filters: readonly ReportFilter[], total: number): string {
  const all = `<button type="button" data-filter="" aria-pressed="true" disabled>all (${total})</button>`
  const buttons = filters.map((f) => {
    const n = new Set(f.rowIds).size
    return `<button type="button" data-filter="${escapeHtml(f.id)}" data-rows="${escapeHtml(JSON.stringify([...new Set(f.rowIds)]))}" aria-pressed="false" disabled>${escapeHtml(f.label)} (${n})</button>`
  })
  return `<div class="filters" role="group" aria-label="show only the images">${[all, ...buttons].join(' ')} <span id="shown" aria-live="polite">showing ${total} of ${total}</span></div>`
}

function checkInput(input: ReportInput): void {
  const isStr = (v: unknown): v is string => typeof v === 'string'
  const rows = input.rows
  const ids = new Set(rows.map((r) => r.id))
  for (const r of rows) {
    if (r === null || typeof r !== 'object' || !isStr(r.id)) throw new TypeError('renderReport: every row needs a string id')
    if (r.captions === null || typeof r.captions !== 'object') throw new TypeError(`renderReport: row ${r.id} needs captions`)
    if (r.thumbnail !== undefined && !DATA_URI.test(r.thumbnail)) {
      throw new SemicapError('E_VALUE', `renderReport: thumbnail of ${String(r.id)} must be a base64 data:image URI`)
    }
    if (r.facts === undefined) continue
    if (r.facts === null || typeof r.facts !== 'object') throw new TypeError(`renderReport: facts of row ${r.id} must be an object`)
    for (const [name, facts] of Object.entries(r.facts)) {
      if (!own(r.captions, name)) throw new SemicapError('E_VALUE', `renderReport: row ${r.id} has facts for "${name}" but no caption of it`)
      if (!Array.isArray(facts) || !facts.every((f) => f !== null && typeof f === 'object' && isStr(f.text) && typeof f.holds === 'boolean')) {
        throw new TypeError(`renderReport: facts of "${name}" in row ${r.id} must be a list of { text: string, holds: boolean }`)
      }
    }
  }
  if (input.imageSize !== undefined && !(typeof input.imageSize === 'number' && Number.isFinite(input.imageSize) && input.imageSize > 0)) {
    throw new SemicapError('E_VALUE', `renderReport: imageSize must be a positive number of px, got ${String(input.imageSize)}`)
  }
  if (input.filters !== undefined) {
    if (!Array.isArray(input.filters)) throw new TypeError('renderReport: filters must be an array')
    const seen = new Set<string>()
    for (const f of input.filters as readonly ReportFilter[]) {
      if (f === null || typeof f !== 'object' || !isStr(f.id) || !isStr(f.label) || !Array.isArray(f.rowIds) || !f.rowIds.every(isStr)) {
        throw new TypeError('renderReport: every filter is { id: string, label: string, rowIds: string[] }')
      }
      if (f.id === '' || seen.has(f.id)) throw new SemicapError('E_VALUE', `renderReport: filter id "${f.id}" is empty or not unique`)
      seen.add(f.id)
      const unknown = f.rowIds.find((id: string) => !ids.has(id))
      if (unknown !== undefined) throw new SemicapError('E_VALUE', `renderReport: filter "${f.id}" names row "${unknown}", which is not in rows`)
    }
  }
  if (input.claims !== undefined && !(Array.isArray(input.claims) && input.claims.every((c) => c !== null && typeof c === 'object' && isStr(c.text) && isStr(c.verdict)))) {
    throw new TypeError('renderReport: claims must be a list of { text: string, verdict: string }')
  }
  if (input.notes !== undefined && !(Array.isArray(input.notes) && input.notes.every(isStr))) {
    throw new TypeError('renderReport: notes must be a list of strings')
  }
  if (input.trainingLogs !== undefined) {
    if (input.trainingLogs === null || typeof input.trainingLogs !== 'object' || !Object.values(input.trainingLogs).every(Array.isArray)) {
      throw new TypeError('renderReport: trainingLogs must map stage labels to lists of log entries')
    }
  }
}

const SCRIPT = `(function () {
  var table = document.getElementById('rows');
  if (!table) return;
  var body = table.tBodies[0];
  var heads = table.querySelectorAll('th[data-col]');
  function val(tr, c) {
    var v = tr.cells[c].getAttribute('data-v');
    return v === null || v === '' ? NaN : parseFloat(v);
  }
  function sortBy(c, asc) {
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = val(a, c), y = val(b, c);
      if (isNaN(x) || isNaN(y)) return isNaN(x) ? (isNaN(y) ? 0 : 1) : -1; // missing values last
      return asc ? x - y : y - x;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    for (var i = 0; i < heads.length; i++) heads[i].removeAttribute('aria-sort');
    var th = table.querySelector('th[data-col="' + c + '"]');
    th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
    table.setAttribute('data-sort', c + ':' + (asc ? 'asc' : 'desc'));
  }
  for (var i = 0; i < heads.length; i++) {
    heads[i].addEventListener('click', function (ev) {
      var th = ev.currentTarget, c = +th.getAttribute('data-col');
      sortBy(c, th.getAttribute('aria-sort') !== 'ascending');
    });
  }
  var init = table.getAttribute('data-default');
  if (init) sortBy(+init.split(':')[0], init.split(':')[1] === 'asc');

  // Filters: each button holds its row ids; a row's id is the text of its first cell.
  var buttons = document.querySelectorAll('.filters button[data-filter]');
  var shown = document.getElementById('shown');
  function choose(btn) {
    var list = btn.hasAttribute('data-rows') ? JSON.parse(btn.getAttribute('data-rows')) : null;
    var keep = list ? new Set(list) : null;
    var rows = body.rows, n = 0;
    for (var i = 0; i < rows.length; i++) {
      var on = !keep || keep.has(rows[i].cells[0].textContent);
      rows[i].hidden = !on;
      if (on) n++;
    }
    for (var j = 0; j < buttons.length; j++) buttons[j].setAttribute('aria-pressed', buttons[j] === btn ? 'true' : 'false');
    if (shown) shown.textContent = 'showing ' + n + ' of ' + rows.length;
    table.setAttribute('data-filter', btn.getAttribute('data-filter'));
  }
  for (var k = 0; k < buttons.length; k++) {
    buttons[k].disabled = false;
    buttons[k].addEventListener('click', function (ev) { choose(ev.currentTarget); });
  }
  document.documentElement.setAttribute('data-report-ready', '1');
})();`

function style(imageSize: number): string {
  return `body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222}
table{border-collapse:collapse;margin-bottom:16px}th,td{border:1px solid #ddd;padding:4px 8px;vertical-align:top;text-align:left}
thead th{background:#f3f3f3}th[data-col]{cursor:pointer;font-size:12px;min-width:4em}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}tr[hidden]{display:none}
img.thumb{width:${imageSize}px;height:auto;display:block;image-rendering:pixelated;border:1px solid #ccc}
.caps{display:grid;grid-template-columns:repeat(auto-fit,minmax(180px,1fr));gap:6px 12px;min-width:360px}
.cap{margin:0 0 4px;overflow-wrap:anywhere;min-width:0}.cap .who{color:#555;font-weight:600}.cap .text{margin:0 0 2px;font-size:15px}.cap.missing .text{color:#999}
.tally{font-weight:normal;font-size:12px;color:#666}
ul.facts{list-style:none;margin:0;padding:0;font-size:13px}li.fact{margin:0}
.fact .mark{display:inline-block;width:1.2em;font-weight:bold}
.fact-true{color:#1a7f37}.fact-false{color:#b3261e}.nofacts{margin:0;font-size:13px;color:#777;font-style:italic}
.vh{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
ul.refs{margin:4px 0 0;padding-left:16px;color:#555}.refs-h{margin:6px 0 0;font-size:12px;color:#777}
.plots{display:flex;flex-wrap:wrap;gap:8px}figure.plot{margin:0}section.stage h3{margin:12px 0 4px}
table.claims td.verdict{font-weight:600;white-space:nowrap}section.notes p{max-width:60em}
.filters{margin:0 0 8px}.filters button{margin:0 4px 4px 0;padding:3px 10px;border:1px solid #888;border-radius:12px;background:#fff;cursor:pointer}
.filters button[aria-pressed=true]{background:#222;color:#fff}.filters button:disabled{cursor:default;opacity:.7}
#shown{color:#555;margin-left:8px}`
}

/** Renders the report; returns the HTML text of one self-contained file. */
export function renderReport(input: ReportInput): string {
  if (input === null || typeof input !== 'object') throw new TypeError('renderReport: input must be an object')
  if (typeof input.title !== 'string') throw new TypeError('renderReport: title must be a string')
  if (!Array.isArray(input.rows)) throw new TypeError('renderReport: rows must be an array')
  checkInput(input)
  const rows: readonly ReportRow[] = input.rows
  const captioners = keysOf(rows.map((r) => r.captions))
  const cols = keysOf(rows.map((r) => r.scores))
  if (input.sortBy !== undefined && !cols.includes(input.sortBy)) {
    throw new SemicapError('E_VALUE', `renderReport: sortBy "${input.sortBy}" is not a score column (${cols.join(', ')})`)
  }
  const asc = input.ascending ?? true
  const sortCol = input.sortBy ?? cols[0]
  const firstScore = 3 // cells before the scores: id, image, captions + references
  const order = rows.map((r, i) => ({ r, i, v: sortCol === undefined ? NaN : (r.scores?.[sortCol] ?? NaN) }))
  order.sort((a, b) => {
    const [x, y] = [Number.isFinite(a.v) ? a.v : NaN, Number.isFinite(b.v) ? b.v : NaN]
    if (isNaN(x) || isNaN(y)) return isNaN(x) ? (isNaN(y) ? a.i - b.i : 1) : -1
    return (asc ? x - y : y - x) || a.i - b.i
  })

  const head = cols
    .map((c, j) => `<th data-col="${firstScore + j}"${c === sortCol ? ` aria-sort="${asc ? 'ascending' : 'descending'}"` : ''}>${escapeHtml(c)}</th>`)
    .join('')
  const imageSize = input.imageSize ?? 192
  const body = order
    .map(({ r }) => {
      const img = r.thumbnail ? `<img class="thumb" alt="${escapeHtml(r.id)}" src="${escapeHtml(r.thumbnail)}">` : ''
      const refs = r.references?.length
        ? `<p class="refs-h">references</p><ul class="refs">${r.references.map((x) => `<li>${escapeHtml(x)}</li>`).join('')}</ul>`
        : ''
      const scores = cols
        .map((c) => {
          const v = r.scores?.[c]
          const ok = typeof v === 'number' && Number.isFinite(v)
          return `<td class="num" data-v="${ok ? String(v) : ''}">${fmt(ok ? v : undefined)}</td>`
        })
        .join('')
      return `<tr><td>${escapeHtml(r.id)}</td><td>${img}</td><td>${captionBlocks(r, captioners)}${refs}</td>${scores}</tr>`
    })
    .join('\n')
  const defaultAttr = sortCol === undefined ? '' : ` data-default="${firstScore + cols.indexOf(sortCol)}:${asc ? 'asc' : 'desc'}"`
  const filters = input.filters?.length ? filterBar(input.filters, rows.length) : ''

  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(input.title)}</title>
<style>${style(imageSize)}</style>
</head><body>
<h1>${escapeHtml(input.title)}</h1>
${input.claims ? claimsSection(input.claims) : ''}
${input.notes ? notesSection(input.notes) : ''}
${input.summary ? summaryTable(input.summary) : ''}
${trainingSection(input.trainingLog, input.trainingLogs)}
<h2>Images (${rows.length})</h2>
${filters}
<table id="rows"${defaultAttr}><thead><tr><th>id</th><th>image</th><th>captions / references</th>${head}</tr></thead><tbody>
${body}
</tbody></table>
<script>${SCRIPT}</script>
</body></html>
`
}
