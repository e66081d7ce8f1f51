// The status page's common parts: formatting, building HTML and SVG, the 24 h chart, and the loop
// that fetches /status and /status/history and redraws. Plain modules, no dependencies: the files
// ship as they are. Everything the daemon sends is put in as text (textContent), never as markup.

const SVG_NS = 'http://www.w3.org/2000/svg';
const REFRESH_MS = 30_000;

// ---------------------------------------------------------------------------------------------
// Formatting (the CLI's units: 3h12m, 6.6 KiB)
// ---------------------------------------------------------------------------------------------

/**
 * Seconds as the CLI writes durations: 850ms, 45s, 12m, 3h12m, 2d4h; null as "–". Mirrors
 * formatDuration in packages/shared/src/duration.ts (the page ships without a build step, so it
 * cannot import it): change both together.
 */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '–';
  const ms = seconds * 1000;
  if (ms < 1000) return `${Math.round(ms)}ms`;
  const s = Math.round(ms / 1000);
  if (s < 120) return `${s}s`;
  const m = Math.round(s / 60);
  if (m < 120) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h${m % 60 ? `${m % 60}m` : ''}`;
  return `${Math.floor(h / 24)}d${h % 24 ? `${h % 24}h` : ''}`;
}

/** Bytes in IEC units, as `tandem-primary list` shows them. */
export function bytes(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

const pad = (n) => String(n).padStart(2, '0');

/** An ISO time as local "YYYY-MM-DD HH:MM:SS"; null as "–". */
export function time(iso) {
  if (!iso) return '–';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** "12m ago" / "in 3h" relative to `now` (ms). */
export function relative(iso, now) {
  if (!iso) return '';
  const s = (Date.parse(iso) - now) / 1000;
  if (!Number.isFinite(s)) return '';
  return s < 0 ? `${duration(-s)} ago` : `in ${duration(s)}`;
}

export const plural = (n, one, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

// ---------------------------------------------------------------------------------------------
// DOM
// ---------------------------------------------------------------------------------------------

function build(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'text') el.textContent = String(v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
  }
  return el;
}

/** An HTML element: h('td', { class: 'num' }, 'text', child, ...). */
export const h = (tag, attrs = {}, ...children) => build(document.createElement(tag), attrs, children);
/** An SVG element. */
export const svg = (tag, attrs = {}, ...children) => build(document.createElementNS(SVG_NS, tag), attrs, children);

export function section(title, note, ...body) {
  return h('section', {}, h('h2', {}, title, note ? h('span', { class: 'muted' }, note) : null), ...body);
}

/** A figure card: label, big value, a note under it. */
export function figure(label, value, note, opts = {}) {
  return h('div', { class: `figure${opts.bad ? ' bad' : ''}`, 'data-figure': opts.key ?? null }, h('div', { class: 'label' }, label), h('div', { class: 'value' }, value), note ? h('div', { class: 'note' }, note) : null);
}

/** A table: columns [{ label, num, wrap }], rows of cells (strings or nodes); rowClass(row index). */
export function table(columns, rows, opts = {}) {
  if (rows.length === 0) return h('p', { class: 'muted' }, opts.empty ?? 'None.');
  return h(
    'div',
    { class: 'table-wrap' },
    h(
    'table',
    {},
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { class: c.num ? 'num' : null }, c.label)))),
    h('tbody', {}, rows.map((r, i) => h('tr', { class: opts.rowClass?.(i) ?? null }, r.map((cell, j) => h('td', { class: columns[j]?.num ? 'num' : columns[j]?.wrap ? 'wrap' : null }, cell))))),
    ),
  );
}

/** A definition list of [term, value] pairs (null pairs skipped). */
export function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

export function problemList(problems) {
  if (problems.length === 0) return h('p', { class: 'no-problems', id: 'no-problems' }, 'No problems seen.');
  return h('ul', { class: 'problems', id: 'problems' }, problems.map((p) => h('li', {}, p)));
}

// ---------------------------------------------------------------------------------------------
// Charts
// ---------------------------------------------------------------------------------------------

const DURATION_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 432000, 864000];
const TIME_STEPS_MS = [60_000, 120_000, 300_000, 600_000, 900_000, 1_800_000, 3_600_000, 7_200_000, 10_800_000, 21_600_000];

function niceStep(span, ticks, kind) {
  const raw = span / ticks;
  if (kind === 'duration') return DURATION_STEPS.find((s) => s >= raw) ?? Math.ceil(raw / 86400) * 86400;
  const p = 10 ** Math.floor(Math.log10(Math.max(raw, 1e-9)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= raw) return kind === 'count' ? Math.max(1, Math.ceil(m * p)) : m * p;
  return 10 * p;
}

const clock = (t) => {
  const d = new Date(t);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}`;
};

/**
 * A line chart over time: series [{ label, cls: 's1'…'s5', points: [[t ms, value | null]] }] from
 * `from` to `to` (ms). A null value breaks the line (not known then). kind 'duration' labels the y
 * axis in the CLI's units and picks steps that read well as times; 'count' in whole numbers.
 * bands: [[from, to]] drawn behind the lines (e.g. the push channel down); named: label each line's
 * last value with the series' label (default when there are several).
 */
export function lineChart({ title, series, from, to, kind = 'duration', height = 150, bands = [], id, named = series.length > 1 }) {
  const W = 1000;
  const H = height;
  const left = 64;
  const right = 110;
  const top = 24;
  const bottom = 22;
  const pw = W - left - right;
  const ph = H - top - bottom;
  const span = Math.max(to - from, 60_000);
  const x = (t) => left + ((t - from) / span) * pw;
  const values = series.flatMap((s) => s.points.map((p) => p[1])).filter((v) => v !== null && Number.isFinite(v));
  const max = Math.max(kind === 'count' ? 1 : 1, ...values);
  const step = niceStep(max, 4, kind);
  const yMax = Math.ceil(max / step) * step || step;
  const y = (v) => top + ph - (v / yMax) * ph;
  const fmt = kind === 'duration' ? (v) => (v === 0 ? '0' : duration(v)) : (v) => String(v);

  const root = svg('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title, 'data-chart': id ?? null });
  root.append(svg('title', { text: title }));
  root.append(svg('text', { class: 'title', x: left, y: 14, text: title }));
  for (const [a, b] of bands) {
    const xa = x(Math.max(a, from));
    const xb = x(Math.min(b, to));
    if (xb > xa) root.append(svg('rect', { class: 'down-band', x: xa, y: top, width: xb - xa, height: ph }));
  }
  for (let v = 0; v <= yMax + step / 2; v += step) {
    root.append(svg('line', { class: 'grid-line', x1: left, x2: left + pw, y1: y(v), y2: y(v) }));
    root.append(svg('text', { class: 'tick', x: left - 8, y: y(v) + 4, 'text-anchor': 'end', text: fmt(v) }));
  }
  const tStep = TIME_STEPS_MS.find((s) => span / s <= 8) ?? 3 * 3_600_000;
  const offset = new Date(from).getTimezoneOffset() * 60_000;
  for (let t = Math.ceil((from - offset) / tStep) * tStep + offset; t <= to; t += tStep) {
    root.append(svg('line', { class: 'grid-line', x1: x(t), x2: x(t), y1: top, y2: top + ph }));
    root.append(svg('text', { class: 'tick', x: x(t), y: H - 6, 'text-anchor': 'middle', text: clock(t) }));
  }
  root.append(svg('rect', { class: 'frame', x: left, y: top, width: pw, height: ph }));

  if (values.length === 0) {
    root.append(svg('text', { class: 'empty', x: left + pw / 2, y: top + ph / 2, 'text-anchor': 'middle', text: 'not known yet' }));
  }
  const labelY = [];
  for (const s of series) {
    let d = '';
    let open = false;
    let last = null;
    const singles = [];
    const pts = s.points.filter((p) => p[0] >= from && p[0] <= to);
    pts.forEach((p, i) => {
      const v = p[1];
      if (v === null || !Number.isFinite(v)) {
        open = false;
        return;
      }
      d += `${open ? 'L' : 'M'}${x(p[0]).toFixed(1)} ${y(v).toFixed(1)}`;
      const next = pts[i + 1];
      if (!open && (next === undefined || next[1] === null || !Number.isFinite(next[1]))) singles.push(p);
      open = true;
      last = p;
    });
    if (d !== '') root.append(svg('path', { class: `line ${s.cls}`, d }));
    for (const p of singles) root.append(svg('circle', { class: s.cls, cx: x(p[0]), cy: y(p[1]), r: 3 }));
    if (last !== null) {
      root.append(svg('circle', { class: s.cls, cx: x(last[0]), cy: y(last[1]), r: 3.5 }, svg('title', { text: `${s.label}: ${fmt(last[1])} at ${time(new Date(last[0]).toISOString())}` })));
      let ly = y(last[1]) + 4;
      for (const other of labelY) if (Math.abs(other - ly) < 13) ly = other + 13;
      labelY.push(ly);
      root.append(svg('text', { class: `value-label ${s.cls}`, x: left + pw + 8, y: ly, text: `${named ? `${s.label} ` : ''}${fmt(last[1])}` }));
    }
  }
  return root;
}

/** Horizontal bars of a run's stages (seconds) in the order the run recorded them, the total last and drawn apart. */
export function stageBars(durations) {
  const stages = Object.entries(durations ?? {}).filter(([, v]) => typeof v === 'number');
  if (stages.length === 0) return h('p', { class: 'muted' }, 'No stages recorded.');
  stages.sort((a, b) => (a[0] === 'total') - (b[0] === 'total'));
  const max = Math.max(...stages.map(([, v]) => v), 0.001);
  const row = 22;
  const W = 600;
  const labelW = 130;
  const valueW = 70;
  const root = svg('svg', { class: 'bars', viewBox: `0 0 ${W} ${stages.length * row + 4}`, role: 'img', 'aria-label': 'seconds per stage' });
  stages.forEach(([k, v], i) => {
    const w = Math.max(1, (v / max) * (W - labelW - valueW - 10));
    root.append(svg('text', { x: 0, y: i * row + 15, text: k, class: k === 'total' ? null : 'muted' }));
    root.append(svg('rect', { class: `bar${k === 'total' ? ' total' : ''}`, x: labelW, y: i * row + 4, width: w, height: row - 8, rx: 2 }));
    root.append(svg('text', { x: labelW + w + 6, y: i * row + 15, text: duration(v) }));
  });
  return root;
}

/** The chart's time span: the last 24 h, or since the daemon started when that is later. */
export function chartSpan(history) {
  const to = Date.parse(history.now);
  const started = history.startedAt ? Date.parse(history.startedAt) : to;
  const from = Math.max(to - history.windowSeconds * 1000, Math.min(started, history.samples[0]?.t ?? started));
  return { from: Math.min(from, to - 60_000), to, partial: started > to - history.windowSeconds * 1000 };
}

// ---------------------------------------------------------------------------------------------
// The loop
// ---------------------------------------------------------------------------------------------

/** ?site=NAME of the page (a primary serving several sites): what it fetches is that site's. */
const SITE = new URLSearchParams(location.search).get('site');

async function getJson(path) {
  if (SITE !== null) path = `${path}?site=${encodeURIComponent(SITE)}`;
  const r = await fetch(path, { credentials: 'same-origin', cache: 'no-store', headers: { accept: 'application/json' } });
  if (r.status === 401 || r.status === 403) {
    const e = new Error('the session has ended (expired, or the token changed): log in again');
    e.login = true;
    throw e;
  }
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

/**
 * Fetches /status and /status/history, asks render(status, history) for the page's title, verdict
 * (the problems) and sections, and puts them in; again every 30 s.
 */
export function startPage(render) {
  const main = document.getElementById('page');
  const banner = document.getElementById('error');
  const updated = document.getElementById('updated');
  const verdict = document.getElementById('verdict');
  const title = document.getElementById('title');
  const draw = async () => {
    try {
      const [status, history] = await Promise.all([getJson('status'), getJson('status/history')]);
      const page = render(status, history);
      document.title = page.documentTitle;
      title.replaceChildren(...page.title);
      verdict.textContent = history.problems.length === 0 ? 'OK' : plural(history.problems.length, 'problem');
      verdict.className = `badge ${history.problems.length === 0 ? 'ok' : 'bad'}`;
      main.replaceChildren(...page.body);
      updated.textContent = `updated ${time(history.now)}`;
      banner.hidden = true;
      document.body.dataset.ready = 'true';
    } catch (err) {
      banner.replaceChildren(err.message, ...(err.login ? [' ', h('a', { href: 'login' }, 'Log in')] : []));
      banner.hidden = false;
    }
  };
  void draw();
  setInterval(() => void draw(), REFRESH_MS);
}
