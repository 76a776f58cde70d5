/**
 * Caption normalisation as pycocoevalcap does it: Stanford PTBTokenizer (CoreNLP 3.4.1, run with
 * `-preserveLines -lowerCase`), then dropping the tokens in its PUNCTUATIONS list.
 *
 * The Java lexer is a JFlex automaton that takes the longest match at each position (ties: the rule
 * listed first). This file emulates the subset of its rules that caption text exercises, with the
 * same longest-match discipline, so clitics ("dog's" -> dog 's, "don't" -> do n't, "cannot" ->
 * can not), hyphenated words, numbers, abbreviations and quotes come out as the Java tool writes them.
 *
 * Quirks of pycocoevalcap kept on purpose, because published scores include them:
 * - lower-casing happens after lexing, so "(" becomes "-lrb-", which does NOT equal "-LRB-" in the
 *   PUNCTUATIONS list: parentheses, brackets and braces survive as -lrb- -rrb- -lcb- -rcb- tokens.
 * - "/" and "*" are escaped ("and/or" -> "and\/or"), "?!" stays one token, "a." "mr." "etc." keep
 *   their period, 5+ hyphens stay as they are.
 *
 * Remaining differences from the Java tokenizer (rare in captions):
 * - no americanize (3.4.1 rewrote some British spellings, e.g. "colour" -> "color");
 * - URLs, e-mail addresses, phone numbers, SGML tags and character entities other than &amp; are
 *   not recognised as single tokens;
 * - the sentence-end rule that splits "U.S." before a capitalised word is not emulated;
 * - characters the Java lexer deletes as "untokenizable" are kept as one-character tokens when they
 *   are Unicode symbols or punctuation (emoji, for instance), and deleted otherwise;
 * - "[" "]" "<" ">" map to -lrb- / -rrb- as in the 3.x lexers before -LSB- existed (not verified
 *   against the exact 3.4.1 jar).
 */

/** pycocoevalcap's PUNCTUATIONS (case-sensitive, compared after lower-casing, hence the -LRB- quirk). */
export const PTB_PUNCTUATION: ReadonlySet<string> = new Set([
  "''", "'", '``', '`', '-LRB-', '-RRB-', '-LCB-', '-RCB-',
  '.', '?', '!', ',', ':', '-', '--', '...', ';',
])

/** A rule match: `len` competes for the longest match (includes trailing context), `adv` is consumed. */
interface Match { len: number; adv: number; out: string[] }
type Rule = (s: string, i: number) => Match | null

const APOS = "['\u2019\u0092]"
const ABBREV1 =
  'jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec|mon|tue|tues|wed|thu|thurs|fri|' +
  'ala|ariz|Ark|calif|colo|conn|dak|del|fla|ga|Ill|ind|kans?|ky|la|Mass|md|mich|minn|Miss|mo|mont|' +
  'neb|nev|okla|Ore|pa|penn|tenn|tex|va|vt|Wash|wisc?|wyo|inc|cos?|corp|pp?tys?|ltd|plc|bancorp|' +
  'dept|bhd|assn|univ|intl|sys|nos?|prop|ph|tel|est|ext|sq|ft|jr|sr|bros|blvd|rd|esq|etc|al|seq'
const ABBREV4 =
  '[a-z]|mr|mrs|ms|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj|sgt|cpl|pvt|' +
  'mt|capt|ste?|ave|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det|vs|alex|wm|jos|cie|cf|treas|' +
  'invt|elec|natl|m[ft]g'

const ABBREV1_RX = new RegExp(`^(?:${ABBREV1})\\.`, 'i')
/** Words in ABBREV1 that the Java rule makes case-sensitive on their first letter ([I]ll, [M]ass...). */
const CASED_ABBREV = new Set(['ark', 'ill', 'mass', 'miss', 'ore', 'wash'])

/** A rule from a sticky regex; `emit` maps the matched text (and groups) to output tokens. */
function re(source: string, emit: (m: RegExpExecArray) => string[], flags = 'iu'): Rule {
  const rx = new RegExp(source, flags + 'y')
  return (s, i) => {
    rx.lastIndex = i
    const m = rx.exec(s)
    return m && m[0].length > 0 ? { len: m[0].length, adv: m[0].length, out: emit(m) } : null
  }
}
/** A JFlex `head/tail` rule: the tail counts for the longest match but is not consumed. */
function ctx(head: string, tail: string, emit: (h: string) => string[] = (h) => [h]): Rule {
  const rx = new RegExp(`(${head})(${tail})`, 'iuy')
  return (s, i) => {
    rx.lastIndex = i
    const m = rx.exec(s)
    return m ? { len: m[0].length, adv: m[1]!.length, out: emit(m[1]!) } : null
  }
}

const same = (m: RegExpExecArray): string[] => [m[0]]
const escSlash = (t: string): string => t.replace(/(?<!\\)([/*])/g, '\\$1')
/** latexQuotes() of PTBLexer with probablyLeft=false/true. */
function latexQuote(t: string, left: boolean): string {
  return t
    .replace(/'/g, left ? '`' : "'")
    .replace(/"/g, left ? '``' : "''")
    .replace(/[\u0091\u2018\u201B\u2039]/g, '`')
    .replace(/[\u0092\u2019\u203A]/g, "'")
    .replace(/[\u0093\u201C\u00AB]/g, '``')
    .replace(/[\u0094\u201D\u00BB]/g, "''")
}

const L = '\\p{L}\\p{M}'
const LN = '\\p{L}\\p{M}\\p{N}'
// In the lexer's order: on equal lengths the earlier rule wins.
const RULES: Rule[] = [
  // "cannot" is lexed as "can" and the rest pushed back.
  (s, i) => (/^cannot$/i.test(s.slice(i, i + 6)) ? { len: 6, adv: 3, out: [s.slice(i, i + 3)] } : null),
  re('[\u0096\u0097\u2013\u2014\u2015]|&(?:md|mdash|ndash);', () => ['--']),
  re('&amp;', () => ['&']),
  ctx(`[${L}]+`, `${APOS}(?:[msd]|re|ve|ll)`), // dog's -> dog ('s follows)
  ctx('[a-z\u00AD]*[a-mo-z]\u00AD*', `n${APOS}t|n[\u0091\u2018\u201B]t`), // don't -> do (n't follows)
  re(`[${L}]+`, same),
  ...[
    `${APOS}n${APOS}?`, `[ldj]${APOS}`, `${APOS}em`, `[a-hj-xzn]${APOS}[${L}]{2,}`, `${APOS}[2-9]0s`,
    `${APOS}till?`, `[${L}]+[aeiouy]${APOS}[aeiou][${L}]*`, `${APOS}cause|'twas|c'mon|e'er|li'l`,
  ].map((src) => re(src, same)), // APOWORD: one rule per alternative, so the longest one wins
  ctx(`${APOS}(?:[msd]|re|ve|ll)`, '[^a-z]', (h) => [latexQuote(h, false)]),
  re(`n${APOS}t`, (m) => [latexQuote(m[0], false)]),
  re('\\d{1,2}[-/]\\d{1,2}[-/]\\d{2,4}', (m) => [escSlash(m[0])]),
  re('[-+]?(?:\\d*(?:[.:,]\\d+)+|\\d+)', same),
  re('(?:\\d{1,4}[- \u00A0])?\\d{1,4}(?:\\\\?/|\u2044)\\d{1,4}', (m) => [escSlash(m[0]).replace(/ /g, '\u00A0')]),
  re('[\u00BC\u00BD\u00BE]', (m) => [{ '\u00BC': '1\\/4', '\u00BD': '1\\/2', '\u00BE': '3\\/4' }[m[0]]!]),
  re('[a-z0-9]+(?:-[a-z]+){0,2}(?:\\\\?/[a-z0-9]+(?:-[a-z]+){0,2}){1,2}', (m) => [escSlash(m[0])]),
  re('[a-z]*\\$|#', same),
  re('[\u00A2\u00A3\u00A4\u20AC]', (m) => [m[0] === '\u00A2' ? 'cents' : m[0] === '\u00A3' ? '#' : '$']),
  // Abbreviations keep their period ("etc." "mr." "a."); cased ones need a capital first letter.
  (s, i) => {
    const m = ABBREV1_RX.exec(s.slice(i, i + 9))
    if (!m) return null
    const w = m[0].slice(0, -1)
    if (CASED_ABBREV.has(w.toLowerCase()) && w[0] === w[0]!.toLowerCase()) return null
    return { len: m[0].length, adv: m[0].length, out: [m[0]] }
  },
  re(`(?:[a-z](?:\\.[a-z])+|${ABBREV4})\\.`, same),
  ctx('[a-z](?:\\.[a-z])+', '\\s'),
  re('"(?=[a-z0-9$])', () => ['``']),
  re('"', () => ["''"]),
  re('[+%&~^\u2030\u2031=]', same),
  re('[|\\\\\u007f]', () => []),
  re('[<\\[(]', () => ['-LRB-']),
  re('[>\\])]', () => ['-RRB-']),
  re('\\{', () => ['-LCB-']),
  re('\\}', () => ['-RCB-']),
  re('-+', (m) => [m[0].length >= 3 && m[0].length <= 4 ? '--' : m[0]]),
  re('\\.{3,5}|(?:\\.[ \u00A0]){2,4}\\.|[\u0085\u2026]', () => ['...']),
  re('@+|#+|_+', same),
  re('\\*+', (m) => [escSlash(m[0])]),
  re('[,;:]', same),
  re('[?!]+', same),
  re('[.\u00A1\u00BF]', same),
  re('/', () => ['\\/']),
  re('[a-z0-9][a-z0-9.,\u00AD]*(?:-[a-z0-9\u00AD]+)+', (m) => [m[0].replace(/\u00AD/g, '')]),
  re(`(?:[dol]${APOS}[${LN}])?[${LN}]+(?:[-_\u058A\u2010\u2011](?:[dol]${APOS}[${LN}])?[${LN}]+)*`, same),
  ctx("'", '[a-z][^ \\t\\n\\r]', () => ['`']),
  re(`${APOS}(?:[msd]|re|ve|ll)`, (m) => [latexQuote(m[0], false)]),
  re(`''|[\`\u2018\u2019\u201A\u201B\u201C\u201D\u0091-\u0094\u201E\u201F\u2039\u203A\u00AB\u00BB]{1,2}|${APOS}`, (m) => [
    latexQuote(m[0], false),
  ]),
  re('[\\p{S}\\p{P}]', same), // symbols the lexer knows (MISCSYMBOL); see the differences above
]

/**
 * Tokens as PTBTokenizer `-lowerCase` prints them, punctuation included.
 * @example ptbTokenize("A dog's toy.") // ['a', 'dog', "'s", 'toy', '.']
 */
export function ptbTokenize(text: string): string[] {
  if (typeof text !== 'string') throw new TypeError(`ptbTokenize: expected a string, got ${typeof text}`)
  const s = text.replace(/\r?\n|\r/g, ' ') // pycocoevalcap replaces newlines in a caption by spaces
  const tokens: string[] = []
  let i = 0
  while (i < s.length) {
    if (/[\s\u00A0\u2000-\u200F\u3000\uFEFF\u0000]/u.test(s[i]!)) {
      i++
      continue
    }
    let best: Match | null = null
    for (const rule of RULES) {
      const m = rule(s, i)
      if (m && (!best || m.len > best.len)) best = m
    }
    if (!best) {
      i += s.codePointAt(i)! > 0xffff ? 2 : 1 // untokenizable: deleted, as Java's default (firstDelete)
      continue
    }
    for (const t of best.out) tokens.push(t.toLowerCase())
    i += best.adv
  }
  return tokens
}

/** One caption normalised as pycocoevalcap feeds it to the scorers: tokens joined by single spaces. */
export function tokenizeCaption(text: string): string {
  return ptbTokenize(text)
    .filter((t) => !PTB_PUNCTUATION.has(t))
    .join(' ')
}

/** Whitespace split as the scorers do it (Python `str.split()`). */
export function splitTokens(tokenized: string): string[] {
  const t = tokenized.trim()
  return t === '' ? [] : t.split(/\s+/)
}
