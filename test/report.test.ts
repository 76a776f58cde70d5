// renderReport: escaping, self-containment and default order as text; then the page in headless Chromium: a
// screenshot, the sorting script (--dump-dom), and the full report (images, facts, filters, per-stage training plots,
// claims, notes) driven over the DevTools protocol, with and without JS.
import { execFile, type ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { mkdtemp, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import sharp from 'sharp'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { SemicapError } from '../lib/errors.js'
import { renderReport, type ReportFact, type ReportInput, type ReportRow, type TrainingLogEntry } from '../lib/metrics/index.js'
import { closeChromium, launchChromium, type Cdp } from './helpers/cdp.js'
import { repoRoot } from './helpers/paths.js'

const run = promisify(execFile)
const CHROMIUM = '/usr/bin/chromium'
const EVIL = '<script>alert("pwned")</script> & a cat'

async function png(colour: string): Promise<string> {
  const buf = await sharp({ create: { width: 32, height: 32, channels: 3, background: colour } }).png().toBuffer()
  return `data:image/png;base64,${buf.toString('base64')}`
}

let dir: string
let htmlPath: string
let html: string
let input: ReportInput

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'semicap-report-'))
  input = {
    title: 'Eval <run 7>',
    summary: {
      base: { 'BLEU-4': 0.21, 'CIDEr-D': 0.64 },
      ours: { 'BLEU-4': 0.27, 'CIDEr-D': 0.83, 'CLIP-S': 0.71 },
    },
    rows: [
      {
        id: 'img-red',
        thumbnail: await png('#e02020'),
        captions: { base: 'a red square', ours: 'a bright red square' },
        references: ['a red square on nothing', 'red'],
        scores: { 'base CIDEr-D': 0.9, 'ours CIDEr-D': 1.4 },
      },
      {
        id: 'img-green',
        thumbnail: await png('#20c040'),
        captions: { base: 'a square', ours: EVIL },
        references: ['a green square', 'green <b>tile</b>'],
        scores: { 'base CIDEr-D': 0.4, 'ours CIDEr-D': 0.1 },
      },
      {
        id: 'img-blue',
        thumbnail: await png('#2040e0'),
        captions: { base: 'blue', ours: 'a blue square' },
        references: ['a blue square'],
        scores: { 'base CIDEr-D': 0.2, 'ours CIDEr-D': 0.7 },
      },
    ],
    trainingLog: Array.from({ length: 20 }, (_, i) => ({
      step: i * 100,
      loss: 3 * Math.exp(-i / 6) + 0.5,
      reward: i < 5 ? undefined : 0.3 + 0.02 * i,
      'CIDEr-D': i % 5 === 0 ? 0.4 + 0.02 * i : undefined,
    })),
    sortBy: 'ours CIDEr-D',
  }
  html = renderReport(input)
  htmlPath = join(dir, 'report.html')
  await writeFile(htmlPath, html)
})

describe('renderReport', () => {
  it('escapes untrusted text and has exactly one (inline) script', () => {
    expect(html).not.toContain('<script>alert')
    expect(html).toContain('&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt; &amp; a cat')
    expect(html).toContain('green &lt;b&gt;tile&lt;/b&gt;')
    expect(html).toContain('<title>Eval &lt;run 7&gt;</title>')
    expect(html.match(/<script/g)).toHaveLength(1)
    expect(html).not.toMatch(/<script[^>]*\ssrc=/)
  })

  it('is self-contained', () => {
    expect(html).not.toMatch(/(?:src|href)="(?!data:)/)
    expect(html).not.toMatch(/url\(|@import|<link/)
    expect(html.match(/src="data:image\/png;base64,/g)).toHaveLength(3)
  })

  it('writes rows worst first by the chosen score, with summary and plots', () => {
    const order = [...html.matchAll(/<tr><td>(img-[a-z]+)<\/td>/g)].map((m) => m[1])
    expect(order).toEqual(['img-green', 'img-blue', 'img-red']) // ours CIDEr-D 0.1, 0.7, 1.4
    expect(html).toContain('<th>CLIP-S</th>')
    expect(html).toContain('–') // base has no CLIP-S
    // loss, reward and CIDEr-D plots, each a polyline over its defined points.
    expect(html.match(/<svg /g)).toHaveLength(3)
    const polylines = [...html.matchAll(/<polyline points="([^"]*)"/g)].map((m) => m[1]!.split(' ').length)
    expect(polylines).toEqual([20, 15, 4])
  })

  it('rejects a thumbnail that is not a data URI and an unknown sort column', () => {
    const row = { id: 'x', captions: { a: 'b' }, thumbnail: 'https://example.com/x.png' }
    expect(() => renderReport({ title: 't', rows: [row] })).toThrow(SemicapError)
    expect(() => renderReport({ title: 't', rows: [], sortBy: 'nope' })).toThrow(/sortBy/)
  })
})

describe('report in a browser', () => {
  async function chromium(args: string[]): Promise<string> {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`${CHROMIUM} not found: install it (apt-get install -y chromium); this test needs a browser`)
    }
    const profile = await mkdtemp(join(tmpdir(), 'semicap-chromium-'))
    const { stdout } = await run(
      CHROMIUM,
      [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        `--user-data-dir=${profile}`,
        ...args,
        `file://${htmlPath}`,
      ],
      { timeout: 90_000, maxBuffer: 64 * 1024 * 1024 },
    )
    return stdout
  }

  it('renders a screenshot of the given size that is not blank', async () => {
    const shot = join(dir, 'report.png')
    await chromium([`--screenshot=${shot}`, '--window-size=1200,900', '--hide-scrollbars'])
    expect(existsSync(shot)).toBe(true)
    const meta = await sharp(shot).metadata()
    expect([meta.width, meta.height]).toEqual([1200, 900])
    const stats = await sharp(shot).stats()
    expect(Math.max(...stats.channels.map((c) => c.stdev))).toBeGreaterThan(0)
    console.log(`report screenshot: ${shot}`)
  })

  it('runs the sorting script without breaking the page', async () => {
    const dom = await chromium(['--dump-dom'])
    expect(dom).toContain('data-report-ready="1"')
    expect(dom).toContain('data-sort="4:asc"') // column 4 = ours CIDEr-D, ascending
    const order = [...dom.matchAll(/<tr><td>(img-[a-z]+)<\/td>/g)].map((m) => m[1])
    expect(order).toEqual(['img-green', 'img-blue', 'img-red'])
    expect(dom).not.toContain('<script>alert')
  })
})

// ------------------------------------------------------------------ the full report

/** What a hostile caption, fact, label, note or id might carry: it must stay text. */
const XSS = `<img src=x onerror="window.__pwned=1">"'&`
const esc = (t: string) => t.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&#39;')
const IMAGE_SIZE = 160
const SHAPE_RGB: [number, number, number] = [220, 30, 30]
const ODD_ID = `img-"<3>&`

/** A 24x24 PNG: a light background with a coloured 10x10 square, so that upscaling shows (or blurs) hard edges. */
async function tinyPng(rgb: readonly [number, number, number]): Promise<string> {
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="24" height="24" shape-rendering="crispEdges"><rect width="24" height="24" fill="rgb(230,230,230)"/><rect x="7" y="7" width="10" height="10" fill="rgb(${rgb.join(',')})"/></svg>`
  const buf = await sharp(Buffer.from(svg)).png().toBuffer()
  return `data:image/png;base64,${buf.toString('base64')}`
}

const f = (text: string, holds: boolean): ReportFact => ({ text, holds })
const log = (n: number, fields: (i: number) => Omit<TrainingLogEntry, 'step'>): TrainingLogEntry[] =>
  Array.from({ length: n }, (_, i) => ({ step: 10 * i, ...fields(i) }))

let full: ReportInput
let fullHtml: string
let fullPath: string

beforeAll(async () => {
  const rows: ReportRow[] = [
    {
      id: 'img-1',
      thumbnail: await tinyPng(SHAPE_RGB),
      captions: { '(a)': 'a red square', '(b)': 'a blue square', '(c)': 'a large red square' },
      facts: {
        '(a)': [f('a square', true), f('square is red', true)],
        '(b)': [f('a square', true), f('square is blue', false)],
        '(c)': [f('a square', true), f('square is red', true), f('square is large', false)],
      },
      references: ['a red square'],
      scores: { '(a) obj F1': 0.8, '(c) obj F1': 0.6 },
    },
    {
      id: 'img-2',
      thumbnail: await tinyPng([30, 70, 220]),
      captions: { '(a)': 'a circle', '(b)': 'a circle', '(c)': 'a small blue circle' },
      facts: {
        '(a)': [f('a circle', true)],
        '(b)': [f('a circle', true)],
        '(c)': [f('a circle', true), f('circle is blue', true), f('circle is small', true)],
      },
      scores: { '(a) obj F1': 0.4, '(c) obj F1': 1 },
    },
    {
      id: ODD_ID,
      thumbnail: await tinyPng([30, 160, 50]),
      captions: { '(a)': 'a green star', '(b)': XSS, '(c)': 'zxq blorp' },
      facts: {
        '(a)': [f('a star', true), f('star is green', true)],
        '(b)': [f(XSS, false)],
        '(c)': [],
      },
      scores: { '(a) obj F1': 1, '(c) obj F1': 0 },
    },
    {
      // No facts for (a) (and none at all for (b)): the caption alone is shown.
      id: 'img-4',
      thumbnail: await tinyPng([250, 140, 20]),
      captions: { '(a)': 'an orange cross', '(c)': 'an orange cross left of a star' },
      facts: { '(c)': [f('a cross', true), f('cross is orange', true), f('a star', false), f('cross left of star', false)] },
      scores: { '(a) obj F1': 1, '(c) obj F1': 0.5 },
    },
  ]
  full = {
    title: `Full report ${XSS}`,
    claims: [
      { text: '(c) beats (b) on object F1', verdict: 'holds in 6 of 6 runs' },
      { text: `claim ${XSS}`, verdict: `verdict ${XSS}` },
    ],
    notes: ['One world seed, one captioner seed.', `note ${XSS}`],
    summary: { '(a)': { 'obj F1': 0.8 }, '(c)': { 'obj F1': 0.52 } },
    rows,
    imageSize: IMAGE_SIZE,
    filters: [
      { id: 'c-beats-a', label: 'where (c) beats (a)', rowIds: ['img-2'] },
      { id: 'false', label: 'where a captioner states something false', rowIds: ['img-1', ODD_ID, 'img-4'] },
      { id: `odd ${XSS}`, label: `odd ${XSS}`, rowIds: [ODD_ID] },
      { id: 'none', label: 'none of them', rowIds: [] },
    ],
    trainingLogs: {
      'stage 1: cross-entropy': log(12, (i) => ({ loss: 4 - 0.2 * i })),
      [`stage 2 ${XSS}`]: log(60, (i) => ({ loss: 1 + Math.sin(i), reward: 0.2 + 0.005 * i + 0.05 * Math.cos(7 * i), kl: i % 2 ? 0.01 * i : undefined })),
      'stage 3: empty': [{ step: 0 }],
    },
    sortBy: '(c) obj F1',
  }
  fullHtml = renderReport(full)
  fullPath = join(dir, 'full.html')
  await writeFile(fullPath, fullHtml)
})

/** Facts of the input: how many hold and how many do not. */
function factTotals(input: ReportInput): { true: number; false: number } {
  let t = 0, n = 0
  for (const r of input.rows) for (const list of Object.values(r.facts ?? {})) for (const x of list) x.holds ? t++ : n++
  return { true: t, false: n }
}

describe('renderReport: the full report as text', () => {
  it('escapes every untrusted string: captions, facts, labels, filter ids, row ids, notes, claims, stage names', () => {
    expect(fullHtml).not.toContain('<img src=x')
    expect(fullHtml).not.toContain('onerror="')
    expect(fullHtml.match(/<script/g)).toHaveLength(1)
    expect(fullHtml).toContain(`<title>Full report ${esc(XSS)}</title>`)
    expect(fullHtml).toContain(`<p class="text">${esc(XSS)}</p>`) // (b)'s caption
    expect(fullHtml).toContain(`<span class="vh">false: </span>${esc(XSS)}</li>`) // its fact
    expect(fullHtml).toContain(`>odd ${esc(XSS)} (1)</button>`)
    expect(fullHtml).toContain(`data-filter="odd ${esc(XSS)}"`)
    expect(fullHtml).toContain(`<p>note ${esc(XSS)}</p>`)
    expect(fullHtml).toContain(`<td>claim ${esc(XSS)}</td><td class="verdict">verdict ${esc(XSS)}</td>`)
    expect(fullHtml).toContain(`<h3>stage 2 ${esc(XSS)}</h3>`)
    expect(fullHtml).toContain(`<tr><td>${esc(ODD_ID)}</td>`)
    // The filter's row list is JSON inside an attribute: escaped too.
    expect(fullHtml).toContain(`data-rows="${esc(JSON.stringify(['img-1', ODD_ID, 'img-4']))}"`)
  })

  it('marks every fact: as many ✓ and ✗ items as the input has true and false facts', () => {
    // By hand (true/false): img-1 (a) 2/0, (b) 1/1, (c) 2/1; img-2 5/0; odd 2/1; img-4 2/2.
    expect(factTotals(full)).toEqual({ true: 14, false: 5 })
    expect(fullHtml.match(/<li class="fact fact-true"/g)).toHaveLength(14)
    expect(fullHtml.match(/<li class="fact fact-false"/g)).toHaveLength(5)
    expect(fullHtml.match(/<span class="mark" aria-hidden="true">✓<\/span>/g)).toHaveLength(14)
    expect(fullHtml.match(/<span class="mark" aria-hidden="true">✗<\/span>/g)).toHaveLength(5)
    expect(fullHtml).toContain('<span class="tally">2 true, 1 false</span>') // img-1 (c)
    expect(fullHtml.match(/no facts stated/g)).toHaveLength(1) // odd (c): an empty list
    // img-4 has no (b) caption: a placeholder keeps the captioners aligned.
    expect(fullHtml.match(/<div class="cap missing">/g)).toHaveLength(1)
  })

  it('puts claims and notes first, then the summary, one plot group per stage, the filters and the rows', () => {
    const at = (needle: string) => {
      const i = fullHtml.indexOf(needle)
      expect(i, needle).toBeGreaterThan(0)
      return i
    }
    const order = ['<h2>Claims</h2>', '<section class="notes">', '<h2>Corpus metrics</h2>', '<h2>Training</h2>', '<div class="filters"', '<table id="rows"'].map(at)
    expect([...order].sort((a, b) => a - b)).toEqual(order)
    const stages = [...fullHtml.matchAll(/<section class="stage" data-stage="([^"]*)">([\s\S]*?)<\/section>/g)]
    expect(stages.map((m) => m[1])).toEqual(['stage 1: cross-entropy', `stage 2 ${esc(XSS)}`, 'stage 3: empty'])
    const svgs = stages.map((m) => (m[2]!.match(/<svg /g) ?? []).length)
    expect(svgs).toEqual([1, 3, 0]) // loss; loss, reward, kl; nothing to plot
    expect(stages[2]![2]).toContain('no logged values')
    // Raw lines over every defined point; 60 noisy points also get a moving average, 12 do not.
    const raw = (m: RegExpMatchArray) => [...m[2]!.matchAll(/<polyline points="([^"]*)"/g)].map((p) => p[1]!.split(' ').length)
    expect(raw(stages[0]!)).toEqual([12])
    expect(raw(stages[1]!)).toEqual([60, 60, 30])
    expect(stages[0]![2]!.match(/class="smooth"/g)).toBeNull()
    expect(stages[1]![2]!.match(/<polyline class="smooth" points="([^"]*)"/g)).toHaveLength(3)
    expect(fullHtml).toContain(`img.thumb{width:${IMAGE_SIZE}px;height:auto;display:block;image-rendering:pixelated`)
    expect(renderReport({ title: 't', rows: [] })).toContain('img.thumb{width:192px;') // the default size
    expect(fullHtml).toContain('>where (c) beats (a) (1)</button>')
    expect(fullHtml).toContain('<span id="shown" aria-live="polite">showing 4 of 4</span>')
    // Buttons are disabled until the script runs: without JS the page shows every row and no dead controls.
    expect(fullHtml.match(/<button [^>]*disabled>/g)).toHaveLength(5)
  })

  it('keeps a plain report free of the new parts', () => {
    expect(html).not.toContain('class="filters"')
    expect(html).not.toContain('<h2>Claims</h2>')
    expect(html).not.toContain('class="stage"')
    expect(html).not.toContain('class="fact')
  })

  it('rejects filters naming unknown rows, duplicate filter ids, facts of no caption and a bad image size', () => {
    const rows = [{ id: 'r', captions: { a: 'x' } }]
    expect(() => renderReport({ title: 't', rows, filters: [{ id: 'f', label: 'l', rowIds: ['nope'] }] })).toThrow(/nope/)
    expect(() => renderReport({ title: 't', rows, filters: [{ id: 'f', label: 'l', rowIds: ['r'] }, { id: 'f', label: 'm', rowIds: [] }] })).toThrow(SemicapError)
    expect(() => renderReport({ title: 't', rows: [{ ...rows[0]!, facts: { b: [] } }] })).toThrow(/facts for "b"/)
    expect(() => renderReport({ title: 't', rows: [{ ...rows[0]!, facts: { a: [{ text: 'x', holds: 'yes' as unknown as boolean }] } }] })).toThrow(TypeError)
    for (const size of [0, -5, Number.NaN]) expect(() => renderReport({ title: 't', rows, imageSize: size })).toThrow(/imageSize/)
    expect(() => renderReport({ title: 't', rows, claims: [{ text: 'x' } as never] })).toThrow(TypeError)
    expect(() => renderReport({ title: 't', rows, notes: [3 as unknown as string] })).toThrow(TypeError)
  })
})

interface Page {
  evaluate<T>(expression: string): Promise<T>
  send(method: string, params?: Record<string, unknown>): Promise<Record<string, unknown>>
  /** A real mouse click at the centre of the first element matching `selector` (scrolled into view). */
  click(selector: string): Promise<void>
}

describe('the full report in headless Chromium (DevTools protocol)', () => {
  let chromium: ChildProcess | undefined
  let cdp: Cdp | undefined
  let profile: string | undefined
  let exited: Promise<never>

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} not found: install it (apt-get install -y chromium); this test needs a browser`)
    profile = await mkdtemp(join(tmpdir(), 'semicap-chromium-'))
    const launched = launchChromium(CHROMIUM, profile, '1280,900')
    chromium = launched.process
    cdp = launched.cdp
    exited = launched.exited
  })

  afterAll(async () => {
    await closeChromium(chromium, cdp)
    if (profile) rmSync(profile, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 })
  })

  /** A new tab showing `path` (JS off when `scripts` is false), 1280x900 at scale 1. */
  async function open(path: string, scripts = true): Promise<Page> {
    const c = cdp!
    const { targetId } = (await c.send('Target.createTarget', { url: 'about:blank' })) as { targetId: string }
    const { sessionId } = (await c.send('Target.attachToTarget', { targetId, flatten: true })) as { sessionId: string }
    const send = (method: string, params: Record<string, unknown> = {}) => Promise.race([c.send(method, params, sessionId), exited])
    await send('Page.enable')
    await send('Runtime.enable')
    await send('Emulation.setDeviceMetricsOverride', { width: 1280, height: 900, deviceScaleFactor: 1, mobile: false })
    if (!scripts) await send('Emulation.setScriptExecutionDisabled', { value: true })
    const loaded = c.waitFor('Page.loadEventFired', sessionId)
    await send('Page.navigate', { url: `file://${path}` })
    await Promise.race([loaded, exited])
    const evaluate = async <T>(expression: string): Promise<T> => {
      const r = (await send('Runtime.evaluate', { expression, returnByValue: true, awaitPromise: true })) as { result: { value: T }; exceptionDetails?: unknown }
      if (r.exceptionDetails) throw new Error(`page: ${JSON.stringify(r.exceptionDetails)}`)
      return r.result.value
    }
    const click = async (selector: string) => {
      const box = await evaluate<{ x: number; y: number } | null>(`(() => {
        const el = document.querySelector(${JSON.stringify(selector)});
        if (!el) return null;
        el.scrollIntoView({ block: 'center' });
        const r = el.getBoundingClientRect();
        return { x: r.left + r.width / 2, y: r.top + r.height / 2 };
      })()`)
      if (!box) throw new Error(`no element ${selector}`)
      for (const type of ['mouseMoved', 'mousePressed', 'mouseReleased']) {
        await send('Input.dispatchMouseEvent', { type, x: box.x, y: box.y, button: 'left', clickCount: type === 'mouseMoved' ? 0 : 1 })
      }
    }
    return { evaluate, send, click }
  }

  /** Ids of the rows a person sees, top to bottom, and the filter count text. */
  const visibleRows = `(() => ({
    ids: [...document.querySelectorAll('#rows tbody tr')].filter((tr) => tr.getClientRects().length > 0).map((tr) => tr.cells[0].textContent),
    shown: document.getElementById('shown').textContent,
    pressed: [...document.querySelectorAll('.filters button[aria-pressed="true"]')].map((b) => b.textContent),
  }))()`

  it('shows each image at least at the display size, pixelated, with every fact marked; screenshot', async () => {
    const page = await open(fullPath)
    expect(await page.evaluate<string | null>('document.documentElement.getAttribute("data-report-ready")')).toBe('1')
    const imgs = await page.evaluate<{ w: number; h: number; natural: number; loaded: boolean; rendering: string }[]>(
      `[...document.querySelectorAll('img.thumb')].map((i) => { const r = i.getBoundingClientRect(); return { w: r.width, h: r.height, natural: i.naturalWidth, loaded: i.complete && i.naturalWidth > 0, rendering: getComputedStyle(i).imageRendering } })`,
    )
    expect(imgs).toHaveLength(4)
    for (const i of imgs) {
      expect(i.loaded).toBe(true)
      expect(i.natural).toBe(24)
      expect(i.w).toBeGreaterThanOrEqual(IMAGE_SIZE)
      expect(i.h).toBeGreaterThanOrEqual(IMAGE_SIZE)
      expect(i.rendering).toBe('pixelated')
    }
    // Every fact is a visible ✓ or ✗ item.
    const marks = await page.evaluate<{ t: number; f: number; tText: string[]; fText: string[] }>(`(() => {
      const vis = (sel) => [...document.querySelectorAll(sel)].filter((e) => e.getClientRects().length > 0);
      const t = vis('li.fact-true'), f = vis('li.fact-false');
      return { t: t.length, f: f.length, tText: [...new Set(t.map((e) => e.querySelector('.mark').textContent))], fText: [...new Set(f.map((e) => e.querySelector('.mark').textContent))] };
    })()`)
    expect(marks).toEqual({ t: 14, f: 5, tText: ['✓'], fText: ['✗'] })
    // The hostile caption and fact are text (round-trip exactly), nothing ran, nothing was injected.
    const hostile = await page.evaluate<{ pwned: boolean; scripts: number; imgs: number; caption: string; fact: string }>(`(() => {
      const row = [...document.querySelectorAll('#rows tbody tr')].find((tr) => tr.cells[0].textContent === ${JSON.stringify(ODD_ID)});
      return { pwned: window.__pwned !== undefined, scripts: document.scripts.length, imgs: document.images.length,
        caption: row.querySelectorAll('.cap .text')[1].textContent, fact: row.querySelector('li.fact-false').textContent };
    })()`)
    expect(hostile).toEqual({ pwned: false, scripts: 1, imgs: 4, caption: XSS, fact: `✗false: ${XSS}` })

    // A screenshot of img-1's image (a red square): exactly the display size, not blank, and pixelated (hard edges: only the
    // source's two colours, where smooth scaling would blend dozens).
    const rect = await page.evaluate<{ x: number; y: number; w: number; h: number }>(`(() => {
      const i = document.querySelector('img.thumb[alt="img-1"]'); i.scrollIntoView({ block: 'center' });
      const r = i.getBoundingClientRect(), b = parseFloat(getComputedStyle(i).borderLeftWidth);
      return { x: r.left + scrollX + b, y: r.top + scrollY + b, w: r.width - 2 * b, h: r.height - 2 * b };
    })()`)
    expect(rect.w).toBe(IMAGE_SIZE)
    const crop = (await page.send('Page.captureScreenshot', { format: 'png', captureBeyondViewport: true, clip: { x: rect.x, y: rect.y, width: rect.w, height: rect.h, scale: 1 } })) as { data: string }
    const cropPng = Buffer.from(crop.data, 'base64')
    const { data, info } = await sharp(cropPng).removeAlpha().raw().toBuffer({ resolveWithObject: true })
    expect([info.width, info.height]).toEqual([IMAGE_SIZE, IMAGE_SIZE])
    const colours = new Map<string, number>()
    for (let p = 0; p < data.length; p += 3) {
      const k = `${data[p]},${data[p + 1]},${data[p + 2]}`
      colours.set(k, (colours.get(k) ?? 0) + 1)
    }
    expect(colours.size).toBeLessThanOrEqual(3)
    // The square covers (10/24)^2 of the image.
    const red = [...colours.entries()].find(([k]) => k.split(',').map(Number).every((v, j) => Math.abs(v - SHAPE_RGB[j]!) <= 3))
    expect(red?.[1]).toBeGreaterThan(0.15 * IMAGE_SIZE * IMAGE_SIZE)
    expect(red![1]).toBeLessThan(0.2 * IMAGE_SIZE * IMAGE_SIZE)

    // The whole page, for a person to look at.
    await page.evaluate('scrollTo(0, 0)')
    const shot = Buffer.from(((await page.send('Page.captureScreenshot', { format: 'png', captureBeyondViewport: true })) as { data: string }).data, 'base64')
    const out = join(repoRoot, 'test', '.tmp')
    mkdirSync(out, { recursive: true })
    writeFileSync(join(out, 'report-full.png'), shot)
    writeFileSync(join(out, 'report-full.html'), fullHtml)
    console.log(`full report screenshot: ${join(out, 'report-full.png')}`)
    const meta = await sharp(shot).metadata()
    expect(meta.width).toBe(1280)
    expect(meta.height!).toBeGreaterThan(900)
    expect((await sharp(shot).stats()).channels.some((ch) => ch.stdev > 10)).toBe(true)
  })

  it('filters: each button leaves exactly its rows visible and says how many; sorting keeps the filter', async () => {
    const page = await open(fullPath)
    // (c) obj F1: img-1 0.6, img-2 1, odd 0, img-4 0.5 -> ascending: odd, img-4, img-1, img-2.
    const all = [ODD_ID, 'img-4', 'img-1', 'img-2']
    expect(await page.evaluate(visibleRows)).toEqual({ ids: all, shown: 'showing 4 of 4', pressed: ['all (4)'] })
    const expected: Record<string, { ids: string[]; label: string }> = {
      'c-beats-a': { ids: ['img-2'], label: 'where (c) beats (a) (1)' },
      false: { ids: [ODD_ID, 'img-4', 'img-1'], label: 'where a captioner states something false (3)' },
      [`odd ${XSS}`]: { ids: [ODD_ID], label: `odd ${XSS} (1)` },
      none: { ids: [], label: 'none of them (0)' },
    }
    for (const [id, want] of Object.entries(expected)) {
      await page.click(`.filters button[data-filter=${JSON.stringify(id)}]`)
      expect(await page.evaluate(visibleRows), id).toEqual({ ids: want.ids, shown: `showing ${want.ids.length} of 4`, pressed: [want.label] })
    }
    // Sort by (c) obj F1 descending (a second click on the sorted header) with a filter on: the filter stays.
    await page.click('.filters button[data-filter="false"]')
    await page.click('th[aria-sort]')
    expect(await page.evaluate<string>('document.getElementById("rows").getAttribute("data-sort")')).toBe('4:desc')
    expect(await page.evaluate(visibleRows)).toEqual({ ids: ['img-1', 'img-4', ODD_ID], shown: 'showing 3 of 4', pressed: [expected.false!.label] })
    await page.click('.filters button[data-filter=""]')
    expect(await page.evaluate(visibleRows)).toEqual({ ids: ['img-2', 'img-1', 'img-4', ODD_ID], shown: 'showing 4 of 4', pressed: ['all (4)'] })
  })

  it('draws the training plots of every stage, and claims and notes at the top', async () => {
    const page = await open(fullPath)
    const stages = await page.evaluate<{ name: string; plots: number; drawn: boolean }[]>(
      `[...document.querySelectorAll('section.stage')].map((s) => ({ name: s.querySelector('h3').textContent, plots: s.querySelectorAll('svg').length,
        drawn: [...s.querySelectorAll('svg polyline')].every((p) => p.getBBox().width > 100) }))`,
    )
    expect(stages).toEqual([
      { name: 'stage 1: cross-entropy', plots: 1, drawn: true },
      { name: `stage 2 ${XSS}`, plots: 3, drawn: true },
      { name: 'stage 3: empty', plots: 0, drawn: true },
    ])
    const top = await page.evaluate<{ claims: string[][]; notes: string[]; claimsTop: number; rowsTop: number }>(`({
      claims: [...document.querySelectorAll('table.claims tbody tr')].map((tr) => [...tr.cells].map((c) => c.textContent)),
      notes: [...document.querySelectorAll('section.notes p')].map((p) => p.textContent),
      claimsTop: document.querySelector('table.claims').getBoundingClientRect().top,
      rowsTop: document.getElementById('rows').getBoundingClientRect().top,
    })`)
    expect(top.claims).toEqual(full.claims!.map((c) => [c.text, c.verdict]))
    expect(top.notes).toEqual(full.notes)
    expect(top.claimsTop).toBeLessThan(900) // in the first screenful
    expect(top.claimsTop).toBeLessThan(top.rowsTop)
  })

  it('without JS: every row visible in the written order, filter buttons disabled, nothing marked ready', async () => {
    const page = await open(fullPath, false)
    expect(await page.evaluate<string | null>('document.documentElement.getAttribute("data-report-ready")')).toBeNull()
    expect(await page.evaluate(visibleRows)).toEqual({ ids: [ODD_ID, 'img-4', 'img-1', 'img-2'], shown: 'showing 4 of 4', pressed: ['all (4)'] })
    expect(await page.evaluate<boolean[]>(`[...document.querySelectorAll('.filters button')].map((b) => b.disabled)`)).toEqual([true, true, true, true, true])
    expect(await page.evaluate<number>(`[...document.querySelectorAll('li.fact')].filter((e) => e.getClientRects().length > 0).length`)).toBe(19)
  })
})
