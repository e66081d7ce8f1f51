import { TandemError, describeError, isTandemError } from '../errors.js';

/**
 * The dry check both agents run (`tandem-primary check`, `tandem-standby check`): a list of named
 * checks, each of which looks at one thing (the config, a key, the database, a tool, the filestore
 * ...) and answers ok, warn or fail with one line of detail. A check never changes anything.
 *
 * A check that throws has failed: its error's message is the detail and its hint the hint, so the
 * loaders the agents already use (loadPrimaryConfig, loadRecipients, withPg ...) report here exactly
 * what they report to a backup or an apply. A check names the checks it needs; when one of those did
 * not pass, it is skipped and says which.
 */
export type CheckStatus = 'ok' | 'warn' | 'fail' | 'skip';

/** What a check found. */
export interface Verdict {
  status: CheckStatus;
  /** One line: what was looked at and what it is. */
  detail: string;
  /** What to do about it (fail and warn). */
  hint?: string;
}

export const verdict = {
  ok: (detail: string): Verdict => ({ status: 'ok', detail }),
  warn: (detail: string, hint?: string): Verdict => ({ status: 'warn', detail, hint }),
  fail: (detail: string, hint?: string): Verdict => ({ status: 'fail', detail, hint }),
  /** Not applicable here (`encryption: none`, no primary.url ...): no failure. */
  notApplicable: (detail: string): Verdict => ({ status: 'skip', detail }),
};

/** One thing a check found wrong: a failure, or a warning. */
export interface Finding {
  level: 'fail' | 'warn';
  message: string;
  hint: string;
}

/** A failure listing every finding when one fails; else a warning after what is fine; else ok. */
export function judge(fine: string[], found: Finding[]): Verdict {
  const hint = [...new Set(found.map((f) => f.hint))].join('; ');
  if (found.some((f) => f.level === 'fail')) return verdict.fail(found.map((f) => f.message).join('; '), hint);
  if (found.length > 0) return verdict.warn(`${fine.length > 0 ? `${fine.join(', ')}; but ` : ''}${found.map((f) => f.message).join('; ')}`, hint);
  return verdict.ok(fine.join(', '));
}

export interface CheckDef<Ctx> {
  /** Short, lowercase, shown in the first column ("config", "postgres", "filestore"). */
  name: string;
  /** Checks that must have passed (ok or warn) before this one can run. */
  needs?: string[];
  /**
   * A check of one set-up only (WAL mode's): asked first, with what the checks before it found;
   * false leaves the check out of the report altogether (not a skip line: it is not this set-up's),
   * and a check that needs it is skipped as not applying.
   */
  when?(ctx: Ctx): boolean;
  /** A string is an ok verdict with that detail; a thrown error is a failure. */
  run(ctx: Ctx): Promise<Verdict | string> | Verdict | string;
}

export interface CheckResult extends Verdict {
  name: string;
}

/** How long one check may take (a filestore or database that does not answer fails the check, not the run). */
export const CHECK_TIMEOUT_MS = 30_000;

/**
 * A message as one line: a multi-line one ("file: 2 problems:\n  - a\n  - b") becomes
 * "file: 2 problems: a; b".
 */
export function flattenMessage(text: string): string {
  const lines = text
    .split('\n')
    .map((l) => l.trim().replace(/^- /, ''))
    .filter((l) => l !== '');
  if (lines.length <= 1) return lines[0] ?? '';
  const [first, ...rest] = lines;
  return `${first}${first!.endsWith(':') ? ' ' : '; '}${rest.join('; ')}`;
}

function fromError(err: unknown): Verdict {
  if (isTandemError(err)) return { status: 'fail', detail: flattenMessage(err.message), hint: err.hint === undefined ? undefined : flattenMessage(err.hint) };
  return { status: 'fail', detail: `unexpected error: ${flattenMessage(describeError(err))}` };
}

function withTimeout<T>(p: Promise<T>, ms: number, name: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new TandemError('transient', 'CHECK_TIMEOUT', `no answer within ${ms / 1000} s`, { hint: `whatever the ${name} check talks to does not answer; see the log for what it was doing` })),
      ms,
    );
    timer.unref();
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Runs the checks in order, each at most `timeoutMs`. A check whose needs did not all pass is
 * skipped with the reason; every check gets a result, in the order given, but one whose `when`
 * answered false.
 */
export async function runChecks<Ctx>(checks: ReadonlyArray<CheckDef<Ctx>>, ctx: Ctx, opts: { timeoutMs?: number } = {}): Promise<CheckResult[]> {
  const done = new Map<string, CheckResult>();
  /** For a check skipped because of another: the check where it started (one that failed, or does not apply). */
  const causeOf = new Map<string, CheckResult>();
  const results: CheckResult[] = [];
  for (const check of checks) {
    if (check.when !== undefined && !check.when(ctx)) {
      done.set(check.name, { name: check.name, status: 'skip', detail: 'not this set-up' });
      continue;
    }
    const blocker = (check.needs ?? []).find((n) => {
      const r = done.get(n);
      return r === undefined || r.status === 'fail' || r.status === 'skip';
    });
    let outcome: Verdict;
    if (blocker !== undefined) {
      const r = done.get(blocker);
      const cause = r === undefined ? undefined : (causeOf.get(blocker) ?? r);
      if (cause !== undefined) causeOf.set(check.name, cause);
      const why = cause === undefined ? `the ${blocker} check has not run` : cause.status === 'fail' ? `the ${cause.name} check failed` : `the ${cause.name} check does not apply`;
      outcome = { status: 'skip', detail: `skipped: ${why}` };
    } else {
      try {
        const v = await withTimeout(Promise.resolve().then(() => check.run(ctx)), opts.timeoutMs ?? CHECK_TIMEOUT_MS, check.name);
        outcome = typeof v === 'string' ? verdict.ok(v) : v;
      } catch (err) {
        outcome = fromError(err);
      }
    }
    const result: CheckResult = { name: check.name, ...outcome, detail: flattenMessage(outcome.detail) };
    if (result.hint === undefined) delete result.hint;
    done.set(check.name, result);
    results.push(result);
  }
  return results;
}

/** Exit status of a check run: 1 when any check failed, else 0 (warnings and skips do not fail it). */
export const checkExitCode = (results: ReadonlyArray<CheckResult>): 0 | 1 => (results.some((r) => r.status === 'fail') ? 1 : 0);

const LABEL: Record<CheckStatus, string> = { ok: 'ok', warn: 'warn', fail: 'FAIL', skip: 'skip' };

/**
 * The human report: one line per check ("ok    config      /etc/tandem/primary.yml (site www)"),
 * a "hint:" line under each failure and warning that has one, and a last line with the count.
 */
export function formatCheckReport(results: ReadonlyArray<CheckResult>): string[] {
  const width = Math.max(...results.map((r) => r.name.length), 0) + 2;
  const lines: string[] = [];
  for (const r of results) {
    lines.push(`${LABEL[r.status].padEnd(6)}${r.name.padEnd(width)}${r.detail}`);
    if (r.hint !== undefined && (r.status === 'fail' || r.status === 'warn')) lines.push(`${' '.repeat(6 + width)}hint: ${r.hint}`);
  }
  const count = (s: CheckStatus) => results.filter((r) => r.status === s).length;
  const failed = count('fail');
  const parts = [`${count('ok')} ok`, `${count('warn')} warning${count('warn') === 1 ? '' : 's'}`, `${failed} failed`, `${count('skip')} skipped`];
  lines.push(failed === 0 ? `check passed: ${parts.join(', ')}` : `CHECK FAILED: ${parts.join(', ')}`);
  return lines;
}

/** The --json report: {ok, checks: [{name, status, detail, hint?}]}. */
export function checkReportJson(results: ReadonlyArray<CheckResult>): string {
  return JSON.stringify({ ok: checkExitCode(results) === 0, checks: results });
}
