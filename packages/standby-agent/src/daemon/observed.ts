import type { KeyObject } from 'node:crypto';
import { checkHeartbeat, countSetsNewerThan, isNotFound, layout, type Filestore, type LatestPointer, type Logger } from '@tandem/shared';
import type { AppliedState } from '../apply/state.js';
import { mergeHeartbeats } from './gather-status.js';
import { pendingWithoutListing, type LagFigures, type LatestInfo } from './lag.js';
import { isFilestoreError } from './last-error.js';
import type { StandbyMetrics } from './metrics.js';
import { lagOf, walOf, type HeartbeatInfo, type Observed } from './status-doc.js';
import { readWalReplaySync } from '../wal/replay-state.js';
import type { WalFigures } from '../wal/wal-lag.js';

/** latest.json as last verified, and the version it was read at. */
export interface LatestState {
  pointer: LatestPointer;
  version: string;
}

export interface ObservationsOptions {
  fs: Filestore;
  site: string;
  verifyKey: KeyObject;
  /** How long the on-demand figures (heartbeat.json, the pending count) are kept, in ms. */
  pollIntervalMs: number;
  metrics: StandbyMetrics;
  logger: Logger;
  /** When latest.json was last read (the last poll, if it succeeded); null: not known to be current. */
  latestReadAt(): Date | null;
  /** WAL mode: the state dir, whose wal-replay.json wal-fetch writes. */
  walStateDir?: string;
}

/**
 * What the daemon knows of the world between two looks: the applied set, latest.json as of the last
 * poll, the primary's newest heartbeat (heartbeat.json and the push channel), and the pending count.
 * The lag figures of /status and /metrics are computed from these, never by reading on the spot
 * beyond what refreshOnDemand allows.
 */
export class Observations {
  applied: AppliedState | null = null;
  latest: LatestState | null = null;
  heartbeat: HeartbeatInfo | null = null;
  #heartbeatFile: { version: string | undefined; checkedAt: number } = { version: undefined, checkedAt: 0 };
  #pending: { key: string; count: number | null; at: number } | null = null;

  constructor(private readonly o: ObservationsOptions) {}

  latestInfo(): LatestInfo | null {
    const p = this.latest?.pointer;
    return p === undefined ? null : { setId: p.setId, epoch: p.epoch, seq: p.seq, createdAt: p.createdAt, committedAt: p.committedAt };
  }

  /** The inputs of the lag figures, as known now (no filestore request). */
  observed(): Observed {
    const latest = this.latestInfo();
    let pending = pendingWithoutListing(this.applied, latest, this.heartbeat?.latest);
    if (pending === null && this.#pending !== null && this.#pending.key === this.#pendingKey()) pending = this.#pending.count;
    // latest.json as of the last poll that read it: a set committed since is no alarm yet.
    return {
      applied: this.applied,
      latest,
      heartbeat: this.heartbeat,
      pendingSets: pending,
      latestReadAt: this.o.latestReadAt(),
      ...(this.o.walStateDir === undefined ? {} : { walReplay: readWalReplaySync(this.o.walStateDir) }),
    };
  }

  lagFigures(now = new Date()): LagFigures {
    return lagOf(this.observed(), now);
  }

  /** WAL mode: the replay figures (undefined in dump mode). */
  walFigures(now = new Date()): WalFigures | undefined {
    return walOf(this.observed(), now);
  }

  /** A heartbeat (or the primary's hello) on the push channel: newer than the one known, it counts. */
  notePushHeartbeat(at: string, epoch?: number | null): void {
    if (Number.isNaN(Date.parse(at))) return;
    const prev = this.heartbeat;
    if (prev !== null && Date.parse(prev.at) >= Date.parse(at)) return;
    this.heartbeat = {
      at,
      source: 'push',
      primaryHost: prev?.primaryHost ?? null,
      epoch: epoch ?? prev?.epoch ?? null,
      lastBackup: prev?.lastBackup ?? null,
      nextBackupAt: prev?.nextBackupAt ?? null,
      latest: prev?.latest, // a push heartbeat names no set: the last signed one's stands
      ...(prev?.wal === undefined ? {} : { wal: prev.wal }),
    };
  }

  #pendingKey(): string {
    return `${this.latest?.pointer.setId ?? '-'}|${this.applied?.setId ?? '-'}`;
  }

  /**
   * What /status and /metrics need beyond the poll loop, fetched when asked and at most once per
   * pollInterval: the pending count (a LIST, only while something is pending) and heartbeat.json
   * (the push channel brings heartbeats too, but only the signed one names the primary's newest set,
   * which tells a replayed latest.json).
   */
  async refreshOnDemand(): Promise<void> {
    const { fs, site, metrics, logger: log } = this.o;
    const now = Date.now();
    const ttl = this.o.pollIntervalMs;
    if (pendingWithoutListing(this.applied, this.latestInfo(), this.heartbeat?.latest) === null) {
      const key = this.#pendingKey();
      const c = this.#pending;
      if (c === null || c.key !== key || now - c.at >= ttl) {
        try {
          const { count } = await countSetsNewerThan(fs, site, this.applied, { signal: AbortSignal.timeout(10_000) });
          this.#pending = { key, count, at: now };
        } catch (err) {
          metrics.filestoreErrorsTotal.inc();
          this.#pending = { key, count: null, at: now };
          log.debug({ err }, 'could not count pending sets');
        }
      }
    }
    if (now - this.#heartbeatFile.checkedAt >= ttl) {
      this.#heartbeatFile.checkedAt = now;
      const key = layout.heartbeat(site);
      try {
        const r = await fs.getIfChanged(key, this.#heartbeatFile.version, { signal: AbortSignal.timeout(10_000) });
        if (r.changed) {
          this.#heartbeatFile.version = r.info.version;
          const hb = checkHeartbeat(r.body, this.o.verifyKey, site, `${fs.description}/${key}`);
          // The newest heartbeat counts, and the newest set any signed one named: an older heartbeat.json
          // put back does not turn the clock back.
          this.heartbeat = mergeHeartbeats(hb, this.heartbeat);
        }
      } catch (err) {
        if (!isNotFound(err)) {
          if (isFilestoreError(err)) metrics.filestoreErrorsTotal.inc();
          log.debug({ err }, 'could not read heartbeat.json');
        }
      }
    }
  }
}
