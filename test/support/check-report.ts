/** Reading the human report of `tandem-primary check` and `tandem-standby check` in tests. */
import type { RunResult } from './site.js';
import { show } from './standby-helpers.js';

export interface CheckLine {
  status: string;
  name: string;
  detail: string;
}

/** The check lines of a human report (not the hint lines, not the summary). */
export function checkLines(r: RunResult): CheckLine[] {
  const out: CheckLine[] = [];
  for (const l of r.stdout.split('\n')) {
    const m = /^(ok|warn|FAIL|skip) {2,}(\S+) {2,}(.*)$/.exec(l);
    if (m) out.push({ status: m[1]!, name: m[2]!, detail: m[3]! });
  }
  return out;
}

/** The line of the check `name`; throws, showing the run, when there is none. */
export function checkLine(r: RunResult, name: string): CheckLine {
  const found = checkLines(r).find((l) => l.name === name);
  if (!found) throw new Error(`no "${name}" line in:\n${show(r)}`);
  return found;
}

/** The hint printed under the check `name`'s line. */
export function checkHint(r: RunResult, name: string): string {
  const all = r.stdout.split('\n');
  const i = all.findIndex((l) => new RegExp(`^(ok|warn|FAIL|skip) +${name} `).test(l));
  const m = /^ +hint: (.*)$/.exec(all[i + 1] ?? '');
  if (i === -1 || !m) throw new Error(`no hint under "${name}" in:\n${show(r)}`);
  return m[1]!;
}
