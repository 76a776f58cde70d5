// The captioning page: drop or pick images; each gets a card whose caption streams in from POST /caption/stream
// (server-sent events read from the fetch() response body, since EventSource cannot POST). Plain JS, no framework.
'use strict'

const cards = document.getElementById('cards')
const input = document.getElementById('files')
const drop = document.getElementById('drop')
const maxTokens = document.getElementById('max-tokens')
const info = document.getElementById('server-info')

/** Browsers open about 6 connections per host; more requests would only wait in the browser. */
const PARALLEL = 6
const queue = []
let running = 0

function el(tag, className, text) {
  const e = document.createElement(tag)
  if (className) e.className = className
  if (text !== undefined) e.textContent = text
  return e
}

function addCard(file) {
  const card = el('article', 'card')
  card.dataset.state = 'waiting'
  card.dataset.name = file.name
  const img = el('img')
  img.alt = file.name
  img.src = URL.createObjectURL(file)
  const body = el('div', 'body')
  const caption = el('p', 'caption')
  const meta = el('div', 'meta')
  const time = el('span', 'time')
  const score = el('span', 'score')
  meta.append(time, score)
  body.append(el('div', 'name', file.name), caption, meta)
  card.append(img, body)
  cards.prepend(card)
  return { card, caption, time, score }
}

/** Parses server-sent events from a ReadableStream of bytes; calls onEvent(name, data) per event. */
async function readEvents(stream, onEvent) {
  const reader = stream.getReader()
  const decoder = new TextDecoder()
  let buffer = ''
  for (;;) {
    const { value, done } = await reader.read()
    if (done) break
    buffer += decoder.decode(value, { stream: true })
    let end
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end)
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, '')
      let name = 'message'
      const data = []
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith(':')) continue
        const colon = line.indexOf(':')
        const field = colon < 0 ? line : line.slice(0, colon)
        const v = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '')
        if (field === 'event') name = v
        else if (field === 'data') data.push(v)
      }
      if (data.length) onEvent(name, JSON.parse(data.join('\n')))
    }
  }
}

async function captionFile(file, view) {
  const t0 = performance.now()
  // The running clock stops at the 'done' event: the stream may still be open then, and a later tick must not
  // overwrite the server's time.
  const tick = setInterval(() => {
    if (view.card.dataset.state !== 'done') view.time.textContent = `${((performance.now() - t0) / 1000).toFixed(1)} s`
  }, 100)
  try {
    for (let attempt = 0; ; attempt++) {
      const n = Math.min(40, Math.max(1, Number(maxTokens.value) || 20))
      const res = await fetch(`/caption/stream?maxTokens=${n}`, { method: 'POST', body: file, headers: { 'content-type': file.type || 'application/octet-stream' } })
      if (res.status === 503 && attempt < 5) {
        // Busy: wait as asked (Retry-After seconds), then try again.
        await res.body?.cancel()
        await new Promise((r) => setTimeout(r, 1000 * (Number(res.headers.get('retry-after')) || 1)))
        continue
      }
      if (!res.ok) {
        const err = await res.json().catch(() => ({}))
        throw new Error(err.error?.message ?? `HTTP ${res.status}`)
      }
      view.card.dataset.state = 'streaming'
      let text = ''
      let pieces = 0
      let finished = false
      await readEvents(res.body, (name, data) => {
        if (name === 'token') {
          text += data.text
          view.caption.textContent = text
          view.card.dataset.pieces = String(++pieces)
        } else if (name === 'done') {
          finished = true
          clearInterval(tick)
          view.caption.textContent = data.caption
          view.card.dataset.caption = data.caption
          view.time.textContent = `${data.ms} ms`
          view.card.dataset.ms = String(data.ms)
          if (typeof data.score === 'number') view.score.textContent = `score ${data.score.toFixed(2)}`
          view.card.dataset.state = 'done'
        } else if (name === 'error') {
          throw new Error(`${data.code}: ${data.message}`)
        }
      })
      if (!finished) throw new Error('the stream ended early')
      return
    }
  } catch (err) {
    view.card.dataset.state = 'error'
    view.caption.textContent = err.message
  } finally {
    clearInterval(tick)
    if (view.card.dataset.state !== 'done') view.time.textContent = `${Math.round(performance.now() - t0)} ms`
  }
}

function pump() {
  while (running < PARALLEL && queue.length) {
    const job = queue.shift()
    running++
    captionFile(job.file, job.view).finally(() => {
      running--
      pump()
    })
  }
}

function addFiles(files) {
  for (const file of files) {
    if (file.type && !file.type.startsWith('image/')) continue
    queue.push({ file, view: addCard(file) })
  }
  pump()
}

input.addEventListener('change', () => {
  addFiles(Array.from(input.files))
  input.value = ''
})
for (const ev of ['dragenter', 'dragover']) {
  drop.addEventListener(ev, (e) => {
    e.preventDefault()
    drop.classList.add('over')
  })
}
for (const ev of ['dragleave', 'drop']) drop.addEventListener(ev, () => drop.classList.remove('over'))
drop.addEventListener('drop', (e) => {
  e.preventDefault()
  addFiles(Array.from(e.dataTransfer.files))
})
document.getElementById('clear').addEventListener('click', () => {
  for (const img of cards.querySelectorAll('img')) URL.revokeObjectURL(img.src)
  cards.replaceChildren()
})

fetch('/healthz')
  .then((r) => r.json())
  .then((h) => {
    info.textContent = `${h.status} · ${h.batching ? `continuous batching, up to ${h.maxBatch} rows` : 'one call at a time'} · ${h.rssMb} MB`
  })
  .catch(() => (info.textContent = 'server unreachable'))
