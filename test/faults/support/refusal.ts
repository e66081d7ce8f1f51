/**
 * Shared by the tamper, hostile-archive and bad-input suites: one standby site with a set applied
 * (`setUpRefusalSite`), an "outside" directory beside the live dirs that must never change, and
 * `expectRefused`, which checks that a run failed with a message naming what it must name and that
 * nothing live changed.
 */
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect } from 'vitest';
import { ensurePostgres, requireCommands, tmpDir, type RunResult } from '../../support/site.js';
import {
  apply,
  backup,
  createStandbySite,
  expectNoLeftovers,
  liveState,
  removeStandbySite,
  restartLog,
  show,
  type LiveState,
  type StandbySite,
} from '../../support/standby-helpers.js';

export const escapeRe = (t: string): string => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

export const outsideDir = (s: StandbySite): string => join(s.root, 'standby', 'outside');

export async function makeOutside(s: StandbySite): Promise<void> {
  await mkdir(outsideDir(s), { recursive: true });
  await writeFile(join(outsideDir(s), 'target.txt'), 'must not change\n');
}

/** The error lines of a CLI run (the `tandem-standby: error:` line and its indented continuation). */
export function errorText(r: RunResult): string {
  return r.stderr
    .split('\n')
    .filter((l) => /^tandem-(standby|primary)/.test(l) || l.startsWith('  '))
    .join('\n');
}

export interface Baseline {
  live: LiveState;
  restarts: number;
}

export async function baseline(s: StandbySite): Promise<Baseline> {
  return { live: await liveState(s), restarts: (await restartLog(s)).length };
}

export interface RefusalSite {
  root: string;
  s: StandbySite;
  /** The set backed up and applied. */
  first: string;
  /** Taken once everything above is in place. */
  before: Baseline;
}

/**
 * Checks for `commands` and PostgreSQL, then, in a new work dir named from `prefix`: a standby site
 * with one set backed up and applied, the outside dir, and the baseline. If a step fails, what was
 * made so far is removed before the error is thrown.
 */
export async function setUpRefusalSite(prefix: string, commands: string[]): Promise<RefusalSite> {
  requireCommands(commands);
  await ensurePostgres();
  const root = await tmpDir(prefix);
  let s: StandbySite | undefined;
  try {
    s = await createStandbySite(root);
    const first = await backup(s);
    const r = await apply(s);
    expect(r.code, show(r)).toBe(0);
    await makeOutside(s);
    return { root, s, first, before: await baseline(s) };
  } catch (e) {
    await removeStandbySite(s, root);
    throw e;
  }
}

/** The run failed (no signal, no timeout) with every pattern in its error, and nothing live changed. */
export async function expectRefused(s: StandbySite, before: Baseline, r: RunResult, patterns: Array<RegExp | string>): Promise<void> {
  expect(r.code, show(r)).not.toBe(0);
  expect(r.signal, show(r)).toBeNull();
  expect(r.timedOut, show(r)).toBe(false);
  const message = errorText(r);
  for (const p of patterns) expect(message, show(r)).toMatch(typeof p === 'string' ? new RegExp(escapeRe(p)) : p);
  expect(await liveState(s)).toEqual(before.live);
  expect(await expectNoLeftovers(s)).toEqual([]);
  expect(await restartLog(s)).toHaveLength(before.restarts);
  expect(await readdir(outsideDir(s))).toEqual(['target.txt']);
  expect(await readFile(join(outsideDir(s), 'target.txt'), 'utf8')).toBe('must not change\n');
}

/** Counts what a suite tried, printed at the end (and copied into docs/reliability.md). */
export class Tally {
  readonly counts = new Map<string, number>();
  constructor(readonly suite: string) {}
  add(what: string, n = 1): void {
    this.counts.set(what, (this.counts.get(what) ?? 0) + n);
  }
  get total(): number {
    let t = 0;
    for (const n of this.counts.values()) t += n;
    return t;
  }
  print(): void {
    const lines = [...this.counts].map(([k, n]) => `  ${String(n).padStart(6)}  ${k}`);
    console.log(`[${this.suite}] ${this.total} variants tried, all held:\n${lines.join('\n')}`);
  }
}
