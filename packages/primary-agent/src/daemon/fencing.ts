import {
  FencedError,
  checkFenced,
  fencedError,
  isTandemError,
  namesAgent,
  onFencedEnv,
  readEpochDoc,
  type AgentIdentity,
  type Filestore,
  type Logger,
  type PrimaryConfig,
} from '@tandem/shared';
import { readOrCreateEpoch } from '../backup/epoch.js';
import { recordHeldEpoch } from '../backup/held-epoch.js';
import { runHook } from '../hooks.js';
import type { DaemonMetrics } from './metrics.js';
import type { Clock } from './scheduler.js';

/**
 * Fencing in the daemon (ordering rule 7): epoch.json must name this primary. It is read before
 * every backup, on every heartbeat tick and when a switchover asks; a backup that committed tells
 * the epoch it checked. A higher epoch, the same epoch naming another agent, or a latest.json of a
 * higher epoch fences this primary for good: no more backups or heartbeats, the standbys'
 * connections closed (4003), tandem_fenced 1, and onFenced runs (unless it ran for the switchover
 * that ended this way). A daemon whose agent epoch.json never named (a standby's server, another
 * state directory) is stopped the same way but told it is not the site's primary, and onFenced
 * does not run: the site it would stop is not the primary's.
 */
export interface FencedState {
  /** The epoch epoch.json (or latest.json) showed, when known. */
  filestoreEpoch: number | null;
  at: string;
  why: string;
}

export interface FencingOptions {
  config: PrimaryConfig;
  filestore: Filestore;
  logger: Logger;
  clock: Clock;
  /** This primary as epoch.json must name it. */
  self: AgentIdentity;
  metrics: Pick<DaemonMetrics, 'fenced'>;
  hookTimeoutMs?: number;
  /** Stop the schedule and abort a running backup (with `err`). */
  stopBackups(err: FencedError): void;
  /** The switchover hears it before the connections close; true when onFenced already ran for it. */
  endSwitchover(newPrimary: string | null, why: string): boolean;
  /** Close every standby connection. */
  closeConnections(): void;
}

export class Fencing {
  private epochNow: number | null = null;
  private fencedState: FencedState | null = null;
  /** epoch.json never named this agent: it is not a replaced primary (see FencedError.neverPrimary). */
  private neverPrimary = false;
  private fencedHint: string | undefined;

  constructor(private readonly opts: FencingOptions) {}

  /** This primary's epoch; null until epoch.json was read. */
  get epoch(): number | null {
    return this.epochNow;
  }

  get state(): FencedState | null {
    return this.fencedState;
  }

  get fenced(): boolean {
    return this.fencedState !== null;
  }

  /**
   * Read epoch.json. Created as epoch 1 naming this primary when the site has none; a record naming
   * another server (promoted elsewhere) fences this primary. Throws when it cannot be read.
   */
  async check(): Promise<void> {
    const { filestore: fs, config, self } = this.opts;
    if (this.epochNow === null) {
      try {
        this.epochNow = (await readOrCreateEpoch(fs, config, this.opts.logger)).epoch;
      } catch (err) {
        if (!isTandemError(err, 'fenced')) throw err;
        if (err instanceof FencedError) {
          this.epochNow = err.epoch;
          this.neverPrimary = err.neverPrimary;
          this.fencedHint = err.hint;
        }
        // Who the primary is now: a switchover recovered at start-up ends complete if it is its standby.
        const current = await readEpochDoc(fs, config.site).catch(() => null);
        this.fence(current?.doc.epoch ?? null, err.message, current?.doc.primaryHost ?? null);
      }
      return;
    }
    const current = await readEpochDoc(fs, config.site);
    if (current === null) return;
    // Raised naming this very agent (a promote of the standby that shares this state directory): its epoch now.
    if (namesAgent(current.doc, self) && current.doc.epoch > this.epochNow) {
      this.epochNow = current.doc.epoch;
      await recordHeldEpoch(config.stateDir, config.site, self.id, current.doc.epoch).catch((err: unknown) =>
        this.opts.logger.warn({ err }, 'could not record the epoch this primary holds (held-epoch.json); fencing is not affected'),
      );
      return;
    }
    const check = checkFenced(current.doc, { ...self, epoch: this.epochNow }, config.site);
    if (check.fenced) {
      this.fencedHint ??= check.hint;
      this.fence(check.current.epoch, check.message, check.current.primaryHost);
    }
  }

  /** Before a backup uploads anything: throws FENCED when epoch.json no longer names this primary. */
  async beforeBackup(): Promise<void> {
    await this.check();
    if (this.fenced) throw this.error();
  }

  /** A backup committed: runBackup checked that epoch.json names this primary in `epoch`. */
  committed(epoch: number): void {
    this.epochNow = epoch;
  }

  /** latest.json names a set of a higher epoch than this primary's: another primary commits sets. True when fenced. */
  latestAbove(latest: { setId: string; epoch: number }): boolean {
    if (this.epochNow === null || latest.epoch <= this.epochNow) return false;
    this.fence(latest.epoch, `latest.json names set ${latest.setId} of epoch ${latest.epoch}, above this primary's epoch ${this.epochNow}: another primary commits sets`);
    return true;
  }

  error(): FencedError {
    const filestoreEpoch = this.fencedState?.filestoreEpoch ?? null;
    // Not a primary at all: the reason says so itself, and what to do differs.
    if (this.neverPrimary) {
      return fencedError(this.fencedState?.why ?? "this server is not the site's primary", { hint: this.fencedHint, epoch: null, filestoreEpoch, neverPrimary: true });
    }
    return fencedError(`this primary is fenced and makes no more backups: ${this.fencedState?.why ?? 'a higher epoch exists'}`, {
      hint: this.fencedHint,
      epoch: this.epochNow,
      filestoreEpoch,
    });
  }

  fence(filestoreEpoch: number | null, why: string, newPrimary: string | null = null): void {
    if (this.fencedState) return;
    const { config, logger } = this.opts;
    this.fencedState = { filestoreEpoch, at: this.opts.clock.now().toISOString(), why };
    this.opts.metrics.fenced.set(1);
    this.opts.stopBackups(this.error());
    if (this.neverPrimary) {
      // Nothing of this server's to stop: it never was the primary (onFenced would stop a site that is not the primary's).
      logger.error({ filestoreEpoch, why }, 'NOT THE PRIMARY: epoch.json names another agent and never named this one; this daemon makes no backups and writes no heartbeats');
      this.opts.endSwitchover(newPrimary, why);
      this.opts.closeConnections();
      return;
    }
    logger.error({ epoch: this.epochNow, filestoreEpoch, why }, 'FENCED: a higher epoch exists; this primary stops backing up and writing heartbeats');
    // onFenced stopped the site's writes for a switchover already: it does not run twice.
    const alreadyRan = this.opts.endSwitchover(newPrimary, why); // before the close, so the switchover's standby hears it
    this.opts.closeConnections();
    const cmd = config.onFenced;
    if (cmd && alreadyRan) {
      logger.info({ onFenced: cmd }, 'onFenced is not run again: it ran for the switchover');
    } else if (cmd) {
      const env = onFencedEnv({ reason: 'fenced', site: config.site, epoch: this.epochNow, filestoreEpoch });
      void runHook(cmd, env, this.opts.hookTimeoutMs).then((r) => {
        if (r.ok) logger.info({ onFenced: cmd }, 'onFenced ran');
        else logger.error({ onFenced: cmd, error: r.error }, 'onFenced failed');
      });
    }
  }
}
