/**
 * Bad configs generated from the commented samples in etc/ (comments removed), widened with the
 * daemon keys the samples leave out: every key removed, every key given a value of each wrong type,
 * and a misspelt sibling next to every key.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse as fromYaml } from 'yaml';
import { REPO_ROOT } from '../../support/site.js';

export type Doc = Record<string, unknown>;

/** The sample, with every comment and blank line removed, parsed. */
export function sample(agent: 'primary' | 'standby'): Doc {
  const text = readFileSync(join(REPO_ROOT, 'etc', `${agent}.yml`), 'utf8')
    .split('\n')
    .map((l) => l.replace(/\s+#.*$/, ''))
    .filter((l) => !/^\s*#/.test(l) && l.trim() !== '')
    .join('\n');
  return fromYaml(text) as Doc;
}

export interface Variant {
  /** Dotted key path the error must name. */
  path: string;
  kind: 'missing' | 'wrong type' | 'unknown key' | 'bad value';
  doc: Doc;
  /** The value put there (for wrong types). */
  value?: unknown;
}

const clone = (d: Doc): Doc => structuredClone(d);

function getParent(doc: Doc, path: string[]): Doc {
  let cur: any = doc;
  for (const k of path.slice(0, -1)) cur = cur[k];
  return cur as Doc;
}

/** Every key path (mappings and leaves) of a document. */
export function keyPaths(doc: Doc, prefix: string[] = []): string[][] {
  const out: string[][] = [];
  for (const [k, v] of Object.entries(doc)) {
    out.push([...prefix, k]);
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) out.push(...keyPaths(v as Doc, [...prefix, k]));
  }
  return out;
}

function typeOf(v: unknown): string {
  return Array.isArray(v) ? 'array' : v === null ? 'null' : typeof v;
}

/** A value of every type but the key's own. */
function wrongValues(v: unknown): unknown[] {
  const all: Record<string, unknown> = { string: 'not-the-right-type', number: 12345, boolean: true, array: ['x'], object: { x: 1 }, null: null };
  const own = typeOf(v);
  return Object.entries(all)
    .filter(([t]) => t !== own)
    .map(([, x]) => x);
}

export function variants(base: Doc): Variant[] {
  const out: Variant[] = [];
  for (const p of keyPaths(base)) {
    const path = p.join('.');
    const last = p[p.length - 1]!;
    const missing = clone(base);
    delete getParent(missing, p)[last];
    out.push({ path, kind: 'missing', doc: missing });
    for (const value of wrongValues(getParent(base, p)[last])) {
      const d = clone(base);
      getParent(d, p)[last] = value;
      out.push({ path, kind: 'wrong type', doc: d, value });
    }
    const typo = clone(base);
    getParent(typo, p)[`${last}x`] = getParent(base, p)[last];
    out.push({ path: [...p.slice(0, -1), `${last}x`].join('.'), kind: 'unknown key', doc: typo });
  }
  return out;
}
