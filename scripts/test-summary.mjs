// Prints one closing line from vitest's JSON report and fails when any test was skipped or none ran.
import { readFileSync } from 'node:fs';

const file = process.argv[2];
let report;
try {
  report = JSON.parse(readFileSync(file, 'utf8'));
} catch (err) {
  console.error(`test summary: no vitest report at ${file}: ${err.message}`);
  process.exit(1);
}
const skipped = [];
for (const suite of report.testResults ?? []) {
  for (const t of suite.assertionResults ?? []) {
    if (t.status === 'skipped' || t.status === 'pending' || t.status === 'todo') skipped.push(`${suite.name}: ${t.fullName}`);
  }
}
const passed = report.numPassedTests ?? 0;
// A file that fails to load has no failed test, only a failed suite: count those, not the
// describe blocks around a failed test (vitest counts both as suites).
const failedTests = report.numFailedTests ?? 0;
const failedFiles = (report.testResults ?? []).filter((s) => s.status === 'failed' && !(s.assertionResults ?? []).some((t) => t.status === 'failed')).length;
const failed = failedTests + failedFiles;
for (const s of skipped) console.error(`skipped (counts as a failure): ${s}`);
console.log(`tests: ${passed} passed, ${failed} failed, ${skipped.length} skipped`);
process.exit(failed > 0 || skipped.length > 0 || passed === 0 ? 1 : 0);
