import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { it } from 'vitest';
import { apply, backup, createStandbySite } from '../support/standby-helpers.js';
import { ensurePostgres, tmpDir } from '../support/site.js';
// @ts-expect-error plain JS
import { applyChange } from '../../bench/lib/files-tree.mjs';
it('inc2', async () => {
  await ensurePostgres();
  const root = await tmpDir('tandem-prof-');
  const s = await createStandbySite(root, { filesObjects: true });
  rmSync(s.primary.paths.files, { recursive: true, force: true });
  execFileSync('cp', ['-al', '/var/tmp/tandem-bench/files-500mb', s.primary.paths.files]);
  await backup(s);
  let a = await apply(s, ['--json']);
  const full = JSON.parse(a.stdout).durations;
  applyChange(s.primary.paths.files, '/var/tmp/tandem-bench/files-500mb', 0.01);
  await backup(s);
  execFileSync('node', ['--cpu-prof', '--cpu-prof-dir=/tmp/prof-inc2', 'packages/standby-agent/dist/main.js', 'apply', '--config', s.standby.configFile, '--json'], { env: { ...process.env, ...s.env }, stdio: 'ignore' });
  a = await apply(s, ['--json']);
  const d = JSON.parse(a.stdout).durations;
  const staged = a.stderr.split('\n').find((l) => l.includes('files staged')) ?? '';
  console.log('INC2', process.cwd(), full.files, d.files, d.switch_files, staged.slice(staged.indexOf('"files":'), staged.indexOf(',"msg"')));
  rmSync(root, { recursive: true, force: true });
}, 600_000);
