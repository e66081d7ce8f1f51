/**
 * WAL mode: the standby daemon fetches ahead. PostgreSQL asks for one WAL file at a time through
 * restore_command, and each answer by a fresh agent process costs a process start that loads the
 * whole agent (~1 s of CPU on this machine kind) plus the download: under a steady write load the
 * replay fell behind by that alone. So while `tandem-standby run` runs, it watches for the files
 * after the newest one replayed, fetches and verifies each exactly as wal-fetch does (wal-file.ts:
 * signed document, stored and plain digests, system id, the epoch rule) into the spool
 * (`<stateDir>/wal-spool/`, 0700), and writes `<name>.meta.json` last: its presence commits the
 * entry. restore_command's fast path (spool-fast.ts) then only moves the verified file into place.
 *
 * Bounded: at most PREFETCH_AHEAD files ahead; entries at or before the newest replayed go. A file
 * that fails verification is refused and raised as wal-fetch would raise it, and not spooled: the
 * slow path meets it again and refuses it again.
 */
import { chmod, mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { KeyObject } from 'node:crypto';
import { fetchWalFile, isTandemError, nextSegmentName, loadIdentities, readEpochDoc, walKeys, type Filestore, type Logger, type StandbyConfig, type WalDoc } from '@tandem/shared';
import { readWalSeed } from '../apply/cluster.js';
import { checkEpoch } from '../commands/wal-fetch.js';
import { readWalReplay, recordPrefetchRefused } from './replay-state.js';

export const PREFETCH_AHEAD = 4;
export const walSpoolDir = (stateDir: string): string => join(stateDir, 'wal-spool');
export const spoolMetaFile = (spool: string, name: string): string => join(spool, `${name}.meta.json`);
/**
 * What the daemon last found missing from the filestore, and when: `firstMissing` (the first WAL
 * file after the newest replayed that is not stored yet) and `historyMissing` (the next timeline's
 * history file, which PostgreSQL asks for all the time). restore_command's fast path answers "not
 * there yet" from it while it is fresh, without loading the agent (spool-fast.ts).
 */
export const spoolStateFile = (spool: string): string => join(spool, 'state.json');

export interface SpoolMeta {
  archivedAt: string;
  epoch: number;
}

export class WalPrefetcher {
  private timer: NodeJS.Timeout | null = null;
  private busy = false;
  private lastError: string | null = null;
  /** Files spooled since the start (status). */
  spooled = 0;

  constructor(private readonly o: { config: StandbyConfig; fs: Filestore; logger: Logger; verifyKey: KeyObject; everyMs?: number }) {}

  start(): void {
    this.timer = setInterval(() => void this.tick(), this.o.everyMs ?? 500);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  async tick(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    const { config, fs, logger } = this.o;
    try {
      const seed = await readWalSeed(config.stateDir);
      if (seed === null) return;
      const replay = await readWalReplay(config.stateDir);
      const last = [...replay.recent].reverse().find((r) => /^[0-9A-F]{24}$/.test(r.name))?.name ?? seed.startWalFile ?? null;
      if (last === null) return;
      const spool = walSpoolDir(config.stateDir);
      await mkdir(spool, { recursive: true, mode: 0o700 });
      await chmod(spool, 0o700);
      // What PostgreSQL has had goes (and whatever a killed fetch left).
      const present = new Set<string>();
      for (const f of await readdir(spool)) {
        const base = f.replace(/\.meta\.json$/, '');
        if (f === 'state.json' || f === 'state.json.tmp') continue;
        if (base.slice(0, 24) <= last || !/^[0-9A-F]{24}(\.meta\.json)?$/.test(f)) await rm(join(spool, f), { force: true });
        else if (f.endsWith('.meta.json')) present.add(base);
      }
      let name: string | null = last;
      let epochDoc: Awaited<ReturnType<typeof readEpochDoc>> | undefined;
      let identities: string[] | undefined;
      let firstMissing: string | null = null;
      const checkedAt = new Date().toISOString();
      // The next timeline's history file: PostgreSQL looks for it between files.
      const history = `${(parseInt(last.slice(0, 8), 16) + 1).toString(16).toUpperCase().padStart(8, '0')}.history`;
      const historyMissing = (await fs.stat(walKeys(config.site, history).doc)) === null ? history : null;
      for (let i = 0; i < PREFETCH_AHEAD; i++) {
        name = name === null ? null : nextSegmentName(name);
        if (name === null) break;
        if (present.has(name)) continue;
        if ((await fs.stat(walKeys(config.site, name).doc)) === null) {
          firstMissing = name; // not stored yet
          break;
        }
        epochDoc ??= await readEpochDoc(fs, config.site);
        // Read once a tick (a replaced key file is seen at the next one), not once a file.
        identities ??= config.encryption === 'none' || config.keys.identityFile === undefined ? [] : loadIdentities(config.keys.identityFile, logger);
        let doc: WalDoc | null = null;
        try {
          const r = await fetchWalFile({
            filestore: fs,
            site: config.site,
            name,
            verifyKey: this.o.verifyKey,
            identities,
            stagingDir: spool,
            target: join(spool, name),
            expect: { systemId: seed.systemId },
            accept: (d: WalDoc) => checkEpoch(d, epochDoc?.doc ?? null),
          });
          if (r.status === 'missing') break;
          doc = r.doc;
        } catch (err) {
          if (isTandemError(err) && err.kind === 'integrity') {
            logger.error({ wal: name, code: err.code, err }, 'WAL file refused while fetching ahead: not spooled');
            await recordPrefetchRefused(config.stateDir, { name, at: new Date().toISOString(), code: err.code, error: err.message }).catch(() => undefined);
          }
          throw err;
        }
        const meta: SpoolMeta = { archivedAt: doc.archivedAt, epoch: doc.epoch };
        await writeFile(spoolMetaFile(spool, name), `${JSON.stringify(meta)}\n`, { mode: 0o600 });
        this.spooled++;
      }
      // Written after the fetches: a name below firstMissing is stored (or spooled) by then.
      const state = { at: checkedAt, firstMissing, historyMissing };
      await writeFile(`${spoolStateFile(spool)}.tmp`, `${JSON.stringify(state)}\n`, { mode: 0o600 });
      await rename(`${spoolStateFile(spool)}.tmp`, spoolStateFile(spool));
      if (this.lastError !== null) logger.info('fetching WAL ahead again');
      this.lastError = null;
    } catch (err) {
      const msg = (err as Error).message;
      if (msg !== this.lastError) logger.warn({ err }, 'cannot fetch WAL ahead (restore_command fetches it itself meanwhile)');
      this.lastError = msg;
    } finally {
      this.busy = false;
    }
  }
}
