/**
 * A self-contained HTML evaluation report: one file, no external resources (thumbnails must be
 * data: URIs), inline CSS, inline JS for sorting, inline SVG for training curves.
 * All text is escaped: captions come from models and datasets and are untrusted.
 * The rows are written already sorted (worst first by `sortBy`), so the page reads right without
 * JS; the script re-sorts on header clicks and marks <html data-report-ready="1"> when it has run.
 */
import { SemicapError } from '../errors.js'

export interface ReportRow {
  /** Image id, shown in the first column. */
  id: string
  /** data:image/...;base64,... URI of a thumbnail. */
  thumbnail?: string
  /** Captioner name -> generated caption (several captioners side by side). */
  captions: Readonly<Record<string, string>>
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

export interface ReportInput {
  title: string
  /** Captioner name -> corpus metric -> value. */
  summary?: Readonly<Record<string, Readonly<Record<string, number>>>>
  rows: readonly ReportRow[]
  /** When given, line plots of loss, reward and every other numeric field over `step`. */
  trainingLog?: readonly TrainingLogEntry[]
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

/** One inline-SVG line plot of y over step (non-finite points skipped). */
function linePlot(name: string, pts: [number, number][]): string {
  const W = 360, H = 200, L = 56, R = 12, T = 24, B = 30
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1])
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)]
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1]
  if (y0 === y1) [y0, y1] = [y0 - 1, y1 + 1]
  const sx = (x: number): number => L + ((x - x0) / (x1 - x0)) * (W - L - R)
  const sy = (y: number): number => H - B - ((y - y0) / (y1 - y0)) * (H - T - B)
  const poly = pts.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(' ')
  const dots = pts.length === 1 ? `<circle cx="${sx(xs[0]!)}" cy="${sy(ys[0]!)}" r="3" fill="#1f6feb"/>` : ''
  return `<figure class="plot"><svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="${escapeHtml(name)} over steps">
<rect x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" fill="#fafafa" stroke="#ccc"/>
<text x="${W / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">${escapeHtml(name)}</text>
<text x="${L - 4}" y="${T + 10}" text-anchor="end" font-size="10">${fmt(y1)}</text>
<text x="${L - 4}" y="${H - B}" text-anchor="end" font-size="10">${fmt(y0)}</text>
<text x="${L}" y="${H - B + 14}" font-size="10">${Number.isInteger(x0) ? x0 : fmt(x0)}</text>
<text x="${W - R}" y="${H - B + 14}" text-anchor="end" font-size="10">${Number.isInteger(x1) ? x1 : fmt(x1)}</text>
<text x="${(L + W - R) / 2}" y="${H - 4}" text-anchor="middle" font-size="10">step</text>
<polyline points="${poly}" fill="none" stroke="#1f6feb" stroke-width="1.5"/>${dots}
</svg></figure>`
}

function trainingPlots(log: readonly TrainingLogEntry[]): string {
  const series = keysOf(log).filter((k) => k !== 'step')
  // loss and reward first, then the metrics in first-seen order.
  series.sort((a, b) => rank(a) - rank(b))
  const plots = series
    .map((k) => {
      const pts = log
        .filter((e) => Number.isFinite(e.step) && typeof e[k] === 'number' && Number.isFinite(e[k]))
        .map((e) => [e.step, e[k]!] as [number, number])
      return pts.length ? linePlot(k, pts) : ''
    })
    .join('\n')
  return plots ? `<h2>Training</h2>\n<div class="plots">\n${plots}\n</div>` : ''
}
const rank = (k: string): number => (k === 'loss' ? 0 : k === 'reward' ? 1 : 2)

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
  document.documentElement.setAttribute('data-report-ready', '1');
})();`

const STYLE = `body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222}
table{border-collapse:collapse;margin-bottom:16px}th,td{border:1px solid #ddd;padding:4px 8px;vertical-align:top;text-align:left}
thead th{background:#f3f3f3}th[data-col]{cursor:pointer;white-space:nowrap}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}img.thumb{width:96px;height:auto;display:block}
.cap{margin:0 0 4px}.cap b{color:#555;font-weight:600}ul.refs{margin:0;padding-left:16px;color:#555}
.plots{display:flex;flex-wrap:wrap;gap:8px}figure.plot{margin:0}`

/** Renders the report; returns the HTML text of one self-contained file. */
export function renderReport(input: ReportInput): string {
  if (input === null || typeof input !== 'object') throw new TypeError('renderReport: input must be an object')
  if (typeof input.title !== 'string') throw new TypeError('renderReport: title must be a string')
  if (!Array.isArray(input.rows)) throw new TypeError('renderReport: rows must be an array')
  const rows: readonly ReportRow[] = input.rows
  for (const r of rows) {
    if (r.thumbnail !== undefined && !DATA_URI.test(r.thumbnail)) {
      throw new SemicapError('E_VALUE', `renderReport: thumbnail of ${String(r.id)} must be a base64 data:image URI`)
    }
  }
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
  const body = order
    .map(({ r }) => {
      const img = r.thumbnail ? `<img class="thumb" alt="${escapeHtml(r.id)}" src="${escapeHtml(r.thumbnail)}">` : ''
      const caps = captioners
        .filter((n) => r.captions[n] !== undefined)
        .map((n) => `<p class="cap"><b>${escapeHtml(n)}:</b> ${escapeHtml(r.captions[n])}</p>`)
        .join('')
      const refs = r.references?.length
        ? `<ul class="refs">${r.references.map((x) => `<li>${escapeHtml(x)}</li>`).join('')}</ul>`
        : ''
      const scores = cols
        .map((c) => {
          const v = r.scores?.[c]
          const ok = typeof v === 'number' && Number.isFinite(v)
          return `<td class="num" data-v="${ok ? String(v) : ''}">${fmt(ok ? v : undefined)}</td>`
        })
        .join('')
      return `<tr><td>${escapeHtml(r.id)}</td><td>${img}</td><td>${caps}${refs}</td>${scores}</tr>`
    })
    .join('\n')
  const defaultAttr = sortCol === undefined ? '' : ` data-default="${firstScore + cols.indexOf(sortCol)}:${asc ? 'asc' : 'desc'}"`

  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(input.title)}</title>
<style>${STYLE}</style>
</head><body>
<h1>${escapeHtml(input.title)}</h1>
${input.summary ? summaryTable(input.summary) : ''}
${input.trainingLog?.length ? trainingPlots(input.trainingLog) : ''}
<h2>Images (${rows.length})</h2>
<table id="rows"${defaultAttr}><thead><tr><th>id</th><th>image</th><th>captions / references</th>${head}</tr></thead><tbody>
${body}
</tbody></table>
<script>${SCRIPT}</script>
</body></html>
`
}
