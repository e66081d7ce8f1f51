import type { KeyObject } from 'node:crypto';
import { compareSets, readVerifiedLatest, type Filestore, type Logger, type SetCommitted } from '@tandem/shared';
import type { CommittedLatest } from '../backup/run-backup.js';
import type { Fencing } from './fencing.js';
import type { DaemonMetrics } from './metrics.js';
import type { LatestKnown, StandbyHub } from './standbys.js';

/**
 * The newest set this primary knows committed: the one it committed last, or the one latest.json
 * names (a `tandem-primary backup --local` run commits outside the daemon; it is pushed all the
 * same). latest.json is signed but carries no freshness: one naming an older set than the newest
 * known is an old copy put back, logged as such, and the heartbeats go on naming the newest.
 */
export interface Latest extends LatestKnown {
  epoch: number;
  seq: number;
}

export interface LatestSetOptions {
  site: string;
  filestore: Filestore;
  logger: Logger;
  verifyKey: KeyObject;
  hub: Pick<StandbyHub, 'broadcast'>;
  metrics: Pick<DaemonMetrics, 'filestoreErrorsTotal'>;
  fencing: Pick<Fencing, 'latestAbove'>;
  /** latest.json shows a set committed at `at`. */
  noteSuccess(at: Date): void;
}

export class LatestSet {
  private latest: Latest | null = null;
  /** The filestore version of latest.json last read or written: a conditional GET skips an unchanged one. */
  private version: string | undefined;

  constructor(private readonly opts: LatestSetOptions) {}

  get current(): Latest | null {
    return this.latest;
  }

  /** This daemon committed a set (latest.json names it now): `set-committed` to every connected standby. */
  committed(l: CommittedLatest, trigger: string): void {
    this.latest = { setId: l.setId, epoch: l.epoch, seq: l.seq, createdAt: l.createdAt, committedAt: l.committedAt };
    this.version = l.version;
    const msg: SetCommitted = { type: 'set-committed', site: this.opts.site, ...this.latest };
    const n = this.opts.hub.broadcast(msg);
    this.opts.logger.info({ setId: l.setId, trigger, standbys: n }, `set-committed pushed to ${n} standby(s)`);
  }

  /** A files delta was committed on top of the newest set: `set-committed` naming it, to every connected standby. */
  deltaCommitted(setId: string, n: number, committedAt: string): void {
    const l = this.latest;
    if (l === null || l.setId !== setId) return;
    const n2 = this.opts.hub.broadcast({ type: 'set-committed', site: this.opts.site, ...l, filesDelta: n });
    this.opts.logger.debug({ setId, delta: n, committedAt, standbys: n2 }, 'files delta pushed');
  }

  /** Read latest.json if it changed. Throws when it cannot be read or does not verify (signature, site). */
  async refresh(): Promise<void> {
    const { filestore: fs, site, logger } = this.opts;
    const r = await readVerifiedLatest(fs, site, this.opts.verifyKey, { knownVersion: this.version });
    if (r === null || 'unchanged' in r) return;
    const p = r.latest;
    this.version = r.version;
    if (this.opts.fencing.latestAbove(p)) return;
    const known = this.latest;
    if (known !== null && compareSets(p, known) < 0) {
      // Signed by this primary, but older than what it committed since: an old copy put back. The
      // heartbeat goes on naming the newest set, which is how the standbys notice.
      logger.error({ latestJson: p.setId, newest: known.setId }, `latest.json names set ${p.setId}, older than ${known.setId} which this primary committed: an old latest.json was put back (replayed); heartbeats keep naming ${known.setId}`);
      this.opts.metrics.filestoreErrorsTotal.inc();
      return;
    }
    this.latest = { setId: p.setId, epoch: p.epoch, seq: p.seq, createdAt: p.createdAt, committedAt: p.committedAt };
    this.opts.noteSuccess(new Date(p.committedAt));
    if (known !== null && compareSets(p, known) > 0) {
      // Committed outside the daemon (tandem-primary backup --local): push it all the same.
      const n = this.opts.hub.broadcast({ type: 'set-committed', site, setId: p.setId, epoch: p.epoch, seq: p.seq, createdAt: p.createdAt, committedAt: p.committedAt });
      logger.info({ setId: p.setId, standbys: n }, 'a set committed outside the daemon: pushed to the standbys');
    }
  }
}
