/**
 * restore_command's fast path: the WAL file PostgreSQL asks for is in the spool, fetched and
 * verified ahead by the daemon (prefetch.ts), so it is only moved into place. This module imports
 * nothing but Node itself: the answer costs a bare process start (~0.1 s), not the agent's (~1 s).
 *
 * `tandem-standby wal-fetch ... --spool DIR NAME PATH`: when DIR/NAME and DIR/NAME.meta.json (the
 * daemon's commit of the entry) exist, the file is copied to PATH.tandem-tmp, fsynced, renamed to
 * PATH (the directory fsynced), recorded in wal-replay.json, and the entry removed. Anything
 * unexpected (no entry, no meta, a failed copy) answers false, and the full wal-fetch runs, which
 * fetches and verifies the file from the filestore itself: this path never refuses and never
 * decides anything.
 */
import { copyFile, open, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, isAbsolute, join, resolve } from 'node:path';

const NAME = /^[0-9A-F]{24}$/;

async function fsyncPath(path: string, flags = 'r'): Promise<void> {
  const fh = await open(path, flags);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export async function spooledFetch(argv: string[]): Promise<boolean> {
  if (argv[0] !== 'wal-fetch' || argv.includes('--help') || argv.includes('-h')) return false;
  const i = argv.indexOf('--spool');
  if (i < 0 || i + 1 >= argv.length || argv.length < 4) return false;
  const spool = argv[i + 1]!;
  const name = argv[argv.length - 2]!;
  const path = argv[argv.length - 1]!;
  if (!NAME.test(name) || !isAbsolute(spool)) return false;
  const src = join(spool, name);
  const metaFile = `${src}.meta.json`;
  const target = resolve(process.cwd(), path);
  const tmp = `${target}.tandem-tmp`;
  try {
    const meta = JSON.parse(await readFile(metaFile, 'utf8')) as { archivedAt?: unknown; epoch?: unknown };
    if (typeof meta.archivedAt !== 'string' || typeof meta.epoch !== 'number') return false;
    await rm(tmp, { force: true });
    await copyFile(src, tmp);
    await fsyncPath(tmp, 'r+');
    await rename(tmp, target);
    await fsyncPath(dirname(target));
    await record(dirname(spool), { name, archivedAt: meta.archivedAt, at: new Date().toISOString(), epoch: meta.epoch, via: 'spool' });
    await rm(metaFile, { force: true });
    await rm(src, { force: true });
    return true;
  } catch {
    await rm(tmp, { force: true }).catch(() => undefined);
    return false;
  }
}

/** The same record wal-fetch keeps (replay-state.ts), written the same way (a new file renamed over). */
async function record(stateDir: string, r: { name: string; archivedAt: string; at: string; epoch: number; via: string }): Promise<void> {
  const file = join(stateDir, 'wal-replay.json');
  let cur: { format: string; recent: Array<{ name: string }>; refused?: unknown } = { format: 'tandem-wal-replay', recent: [] };
  try {
    const v = JSON.parse(await readFile(file, 'utf8')) as typeof cur;
    if (v.format === 'tandem-wal-replay' && Array.isArray(v.recent)) cur = v;
  } catch {
    // none yet
  }
  const recent = [...cur.recent.filter((x) => x.name !== r.name), r].slice(-64);
  const next = `${file}.tmp-${process.pid}`;
  await writeFile(next, `${JSON.stringify({ format: 'tandem-wal-replay', last: r, recent })}\n`, { mode: 0o600 });
  await rename(next, file);
}
