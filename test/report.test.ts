import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import sharp from 'sharp'
import { beforeAll, describe, expect, it } from 'vitest'
import { SemicapError } from '../lib/errors.js'
import { renderReport, type ReportInput } from '../lib/metrics/index.js'

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
