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
 *
 * "Not there yet" is answered here too, from what the daemon found missing moments ago
 * (wal-spool/state.json, at most STATE_FRESH_MS old): PostgreSQL asks for the next file and for the
 * next timeline's history file over and over while it waits, and each full answer was a process
 * start of the whole agent. A file at or past the first missing one is waited for a moment
 * (the daemon fetches it as soon as it is stored, and PostgreSQL would only ask again), then
 * answered "not there" (exit 1). A wrong "not there" only makes PostgreSQL ask again.
 */
import { access, copyFile, open, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, isAbsolute, join, resolve } from 'node:path';

const NAME = /^[0-9A-F]{24}$/;
const HISTORY = /^[0-9A-F]{8}\.history$/;
const STATE_FRESH_MS = 3_000;
const WAIT_MS = 1_500;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

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
  if (!isAbsolute(spool) || !(NAME.test(name) || HISTORY.test(name))) return false;
  const src = join(spool, name);
  const metaFile = `${src}.meta.json`;
  const target = resolve(process.cwd(), path);
  const tmp = `${target}.tandem-tmp`;
  if (!(await exists(metaFile))) {
    const state = await readState(spool);
    if (state === null) return false;
    if (HISTORY.test(name)) {
      if (state.historyMissing !== name) return false;
      process.exitCode = 1;
      return true;
    }
    const first = state.firstMissing;
    if (first === null || first.slice(0, 8) !== name.slice(0, 8) || name < first) return false;
    const until = Date.now() + WAIT_MS;
    while (Date.now() < until && !(await exists(metaFile))) await sleep(100);
    if (!(await exists(metaFile))) {
      process.exitCode = 1;
      return true;
    }
  }
  try {
    // Only for PostgreSQL (it runs restore_command in the data directory): a run by hand takes the
    // full path, which neither consumes the spool nor records the file as handed over.
    if (!(await exists(join(process.cwd(), 'PG_VERSION')))) return false;
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

async function exists(p: string): Promise<boolean> {
  try {
    await access(p);
    return true;
  } catch {
    return false;
  }
}

/** The daemon's note of what is missing (prefetch.ts), when fresh; null otherwise. */
async function readState(spool: string): Promise<{ firstMissing: string | null; historyMissing: string | null } | null> {
  try {
    const v = JSON.parse(await readFile(join(spool, 'state.json'), 'utf8')) as { at?: unknown; firstMissing?: unknown; historyMissing?: unknown };
    const at = typeof v.at === 'string' ? Date.parse(v.at) : NaN;
    const age = Date.now() - at;
    if (!(age >= -1_000 && age < STATE_FRESH_MS)) return null;
    return {
      firstMissing: typeof v.firstMissing === 'string' && NAME.test(v.firstMissing) ? v.firstMissing : null,
      historyMissing: typeof v.historyMissing === 'string' && HISTORY.test(v.historyMissing) ? v.historyMissing : null,
    };
  } catch {
    return null;
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
