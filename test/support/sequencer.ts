import { readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

/**
 * The test files longest first (test/durations.json, measured on a fresh clone), so that the two
 * workers finish together instead of one starting the longest file last: on a fresh clone vitest
 * has no timing cache and orders by file size. A file not listed counts as 20 s. Refresh the list
 * from .tmp/vitest-report.json after large changes (the durations only order the files; a stale
 * figure costs time, never a test).
 */
const DURATIONS = new URL('../durations.json', import.meta.url);
const UNKNOWN_SECONDS = 20;

export class DurationSequencer extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    let seconds: Record<string, number> = {};
    try {
      seconds = (JSON.parse(readFileSync(DURATIONS, 'utf8')) as { seconds: Record<string, number> }).seconds;
    } catch {
      return super.sort(files);
    }
    const root = this.ctx.config.root;
    const of = (f: TestSpecification) => seconds[relative(root, f.moduleId)] ?? UNKNOWN_SECONDS;
    return [...files].sort((a, b) => of(b) - of(a));
  }
}
