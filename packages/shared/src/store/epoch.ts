import { z } from 'zod';
import { TandemError, isNotFound, isPrecondition } from '../errors.js';
import type { Filestore } from '../filestore/filestore.js';
import { layout } from './layout.js';

/**
 * epoch.json: which server is the primary of a site. Created with the first backup (create-if-
 * absent); raised by promote with a conditional write on its version, so of two servers racing to
 * promote exactly one wins. A primary compares it with its own before every upload: a higher epoch,
 * or the same epoch naming another agent, means it has been replaced and must stop (fenced).
 *
 * The primary is named by its agent id (agent-id.ts), which two agents do not share by accident;
 * the host name beside it is for people. A record written before ids existed names a host only,
 * and is compared by name until the next promote writes an id.
 *
 * Plain JSON, not signed: its protection is the conditional write, and every set carries its epoch
 * inside the signed manifest, which is what a standby trusts.
 */
export interface EpochDoc {
  format: 'tandem-epoch';
  version: 1;
  epoch: number;
  /** The server that is primary in this epoch, for people (primary `hostname` / standby `standbyId`). */
  primaryHost: string;
  /** The agent that is primary in this epoch: what fencing compares. Absent in older records. */
  primaryId?: string;
  since: string;
  previous?: { epoch: number; primaryHost: string; primaryId?: string };
  /** Why the epoch was raised: "promote", "promote --force", "switchover". */
  reason?: string;
}

/**
 * What a reader of epoch.json checks: the members fencing compares. Both agents write the record,
 * possibly of different versions, so every other member (version, since, previous, reason, and any
 * a newer agent adds) is accepted as it is and kept: it is for people.
 */
export const epochSchema = z.looseObject({
  format: z.literal('tandem-epoch'),
  /** An integer from 1 (any integer: a record is not refused for being far ahead). */
  epoch: z.number().refine((n) => Number.isInteger(n) && n >= 1),
  primaryHost: z.string(),
  primaryId: z.string().min(1).optional(),
});

export function parseEpoch(raw: Buffer, label: string): EpochDoc {
  let doc: unknown;
  try {
    doc = JSON.parse(raw.toString('utf8'));
  } catch {
    throw new TandemError('integrity', 'EPOCH_INVALID', `${label}: not valid JSON`);
  }
  if (!epochSchema.safeParse(doc).success) {
    throw new TandemError('integrity', 'EPOCH_INVALID', `${label}: not a tandem epoch document`);
  }
  // The record as read, every member in its place (the schema's copy would reorder them).
  return doc as EpochDoc;
}

/** epoch.json's bytes: plain JSON, 2-space indent, trailing newline. */
export const encodeEpoch = (doc: EpochDoc): Buffer => Buffer.from(`${JSON.stringify(doc, null, 2)}\n`);

/** The current epoch record and its version, or null when the site has none yet. */
export async function readEpochDoc(fs: Filestore, site: string, opts: { signal?: AbortSignal } = {}): Promise<{ doc: EpochDoc; version: string } | null> {
  const key = layout.epoch(site);
  try {
    const { body, info } = await fs.getBuffer(key, { signal: opts.signal });
    return { doc: parseEpoch(body, `${fs.description}/${key}`), version: info.version };
  } catch (err) {
    if (isNotFound(err)) return null;
    throw err;
  }
}

/** The filestore's current epoch (who is primary); not-found EPOCH_MISSING when the site has no record. */
export async function requireEpoch(fs: Filestore, site: string): Promise<number> {
  const found = await readEpochDoc(fs, site);
  if (!found) {
    throw new TandemError('not-found', 'EPOCH_MISSING', `${fs.description}/${layout.epoch(site)}: site "${site}" has no epoch record`, {
      hint: 'no backup of this site has been made into this filestore yet; check site and filestore.url',
    });
  }
  return found.doc.epoch;
}

/** An agent as epoch.json names it: its id (what counts) and its host name (for people). */
export interface AgentIdentity {
  id: string;
  host: string;
}

/** Whether the record names this agent: by id, or by host name in a record that has no id. */
export const namesAgent = (doc: EpochDoc, self: AgentIdentity): boolean =>
  doc.primaryId !== undefined ? doc.primaryId === self.id : doc.primaryHost === self.host;

/** "web1", or "web1 (agent …)" where the name alone would not tell two agents apart. */
const who = (host: string, id: string | undefined, otherHost: string): string => (id !== undefined && host === otherHost ? `${host} (agent ${id})` : host);

/** The epoch record, creating epoch 1 naming `self` when the site has none (its first backup). */
export async function readOrCreateEpoch(fs: Filestore, site: string, self: AgentIdentity, now = new Date()): Promise<{ doc: EpochDoc; created: boolean }> {
  const found = await readEpochDoc(fs, site);
  if (found) return { doc: found.doc, created: false };
  const doc: EpochDoc = { format: 'tandem-epoch', version: 1, epoch: 1, primaryHost: self.host, primaryId: self.id, since: now.toISOString() };
  try {
    await fs.writeConditional(layout.epoch(site), encodeEpoch(doc), { ifAbsent: true });
    return { doc, created: true };
  } catch (err) {
    if (!isPrecondition(err)) throw err;
    const again = await readEpochDoc(fs, site); // someone else created it first: theirs counts
    if (!again) throw err;
    return { doc: again.doc, created: false };
  }
}

/**
 * Raise the epoch to name `next` as the primary. `expect` is the epoch the caller follows: if
 * epoch.json has moved past it, another server was promoted meanwhile and this one must not take
 * over from it. The write is conditional on the version read, so two concurrent promotes cannot
 * both win either: the loser gets a 'precondition' error saying who won. A raise that would name
 * the agent the current record names is refused: it would fence nobody.
 */
export async function raiseEpoch(
  fs: Filestore,
  site: string,
  next: AgentIdentity,
  reason: string,
  opts: { expect?: number; now?: Date } = {},
): Promise<EpochDoc> {
  const now = opts.now ?? new Date();
  const current = await readEpochDoc(fs, site);
  if (current && current.doc.primaryId === next.id) {
    throw new TandemError(
      'precondition',
      'PROMOTE_SAME_AGENT',
      `epoch.json of site "${site}" already names agent ${next.id} (${current.doc.primaryHost}, epoch ${current.doc.epoch}) as the primary, and that is this server's own agent id: raising the epoch would name the very primary it is meant to fence; nothing changed`,
      {
        hint: 'this server\'s state directory is a copy of the primary\'s (a cloned image?) or shared with it: remove agent-id from the state directory here (a new id is generated) and promote again',
      },
    );
  }
  if (current && opts.expect !== undefined && current.doc.epoch !== opts.expect) {
    throw new TandemError(
      'precondition',
      'PROMOTE_RACE_LOST',
      `another server changed epoch.json of site "${site}" first: ${current.doc.primaryHost} is primary in epoch ${current.doc.epoch} since ${current.doc.since}, while this server follows epoch ${opts.expect}`,
      { hint: 'this server stays a standby; check which server is serving the site' },
    );
  }
  const doc: EpochDoc = {
    format: 'tandem-epoch',
    version: 1,
    epoch: (current?.doc.epoch ?? 0) + 1,
    primaryHost: next.host,
    primaryId: next.id,
    since: now.toISOString(),
    previous: current ? { epoch: current.doc.epoch, primaryHost: current.doc.primaryHost, primaryId: current.doc.primaryId } : undefined,
    reason,
  };
  try {
    await fs.writeConditional(layout.epoch(site), encodeEpoch(doc), current ? { ifVersion: current.version } : { ifAbsent: true });
    return doc;
  } catch (err) {
    if (!isPrecondition(err)) throw err;
    const winner = await readEpochDoc(fs, site).catch(() => null);
    throw new TandemError(
      'precondition',
      'PROMOTE_RACE_LOST',
      `another server changed epoch.json of site "${site}" first${winner ? `: ${winner.doc.primaryHost} is primary in epoch ${winner.doc.epoch} since ${winner.doc.since}` : ''}`,
      { hint: 'this server stays a standby; check which server is serving the site', cause: err },
    );
  }
}

/** What every FENCED error says to do; a message may add to it. */
export const FENCED_HINT = 'the site now runs elsewhere: stop this primary; to make this server follow, run `tandem-standby run` here';

/** A primary that is no longer the primary: kind 'fenced', code FENCED, exit status 4. */
export class FencedError extends TandemError {
  /** The epoch this primary held (null: not known, or it never held one). */
  readonly epoch: number | null;
  /** The epoch epoch.json is at (null: not known). */
  readonly filestoreEpoch: number | null;
  /**
   * epoch.json has never named this agent (now or in the epoch before, and it keeps no record of
   * an epoch it held): it is not a replaced primary but a server that is not the primary at all
   * (a standby's host, or the promoted server's tandem-primary with another state directory), so
   * there is nothing of its own to stop: onFenced does not run.
   */
  readonly neverPrimary: boolean;

  constructor(message: string, o: FencedErrorOptions = {}) {
    super('fenced', 'FENCED', message, { hint: o.hint ?? FENCED_HINT, cause: o.cause });
    this.epoch = o.epoch ?? null;
    this.filestoreEpoch = o.filestoreEpoch ?? null;
    this.neverPrimary = o.neverPrimary ?? false;
  }
}

export interface FencedErrorOptions {
  hint?: string;
  epoch?: number | null;
  filestoreEpoch?: number | null;
  neverPrimary?: boolean;
  cause?: unknown;
}

/** The one maker of the FENCED error: `message` says by whom and when (or why), the hint what to do. */
export const fencedError = (message: string, o: FencedErrorOptions = {}): FencedError => new FencedError(message, o);

/** Whether epoch.json fences a primary, and if so why, with the message and hint its error carries. */
export type FenceCheck =
  | { fenced: false }
  | {
      fenced: true;
      /**
       * 'higher-epoch': a later primary raised it; 'other-agent': the same epoch names another agent;
       * 'not-primary': this agent held no epoch at all, and epoch.json names another.
       */
      why: 'higher-epoch' | 'other-agent' | 'not-primary';
      current: EpochDoc;
      message: string;
      hint: string;
    };

/** "web1 (agent …)": the name and, when the record has it, the id that fencing compares. */
const named = (host: string, id: string | undefined): string => (id === undefined ? host : `${host} (agent ${id})`);

/**
 * The fencing rule: the filestore names another primary than `self` when its epoch is higher, or
 * the same epoch names another agent (whatever its host name). No record yet fences nobody.
 *
 * `self.epoch` is the epoch this agent held as the primary (the one epoch.json named it in), which
 * the message names beside the newer one; null when it never held one: then any record naming
 * another agent fences it, and the message says it is not the site's primary rather than that it
 * was replaced.
 */
export function checkFenced(current: EpochDoc | null, self: AgentIdentity & { epoch: number | null }, site: string): FenceCheck {
  if (current === null) return { fenced: false };
  if (self.epoch === null) {
    if (namesAgent(current, self)) return { fenced: false };
    return {
      fenced: true,
      why: 'not-primary',
      current,
      message:
        `this server is not the site's primary: epoch ${current.epoch} of site "${site}" names ${named(current.primaryHost, current.primaryId)} as the primary ` +
        `(since ${current.since}${current.reason ? `, ${current.reason}` : ''}), and this agent, ${named(self.host, self.id)}, has never been the primary of this site; nothing is uploaded`,
      hint:
        `back up on the primary (${current.primaryHost})` +
        (current.primaryId !== undefined
          ? `; if this is the server that was promoted, run tandem-primary with the standby's stateDir (or a copy of its agent-id file, which holds ${current.primaryId})`
          : ''),
    };
  }
  if (current.epoch < self.epoch) return { fenced: false };
  if (current.epoch === self.epoch && namesAgent(current, self)) return { fenced: false };
  const sameName = current.primaryHost === self.host;
  return {
    fenced: true,
    why: current.epoch > self.epoch ? 'higher-epoch' : 'other-agent',
    current,
    message: `this primary (${who(self.host, sameName ? self.id : undefined, current.primaryHost)}, epoch ${self.epoch}) has been fenced: ${who(current.primaryHost, current.primaryId, self.host)} became primary of site "${site}" in epoch ${current.epoch} at ${current.since}${current.reason ? ` (${current.reason})` : ''}; no more uploads`,
    hint:
      FENCED_HINT +
      (sameName && current.primaryId !== undefined
        ? `. If this is the server that was promoted, run tandem-primary with the standby's stateDir (or a copy of its agent-id file, which holds ${current.primaryId})`
        : ''),
  };
}

/** The FENCED error of a check that says fenced. */
export const fenceCheckError = (check: Extract<FenceCheck, { fenced: true }>, self: { epoch: number | null }): FencedError =>
  fencedError(check.message, { hint: check.hint, epoch: self.epoch, filestoreEpoch: check.current.epoch, neverPrimary: check.why === 'not-primary' });

/** Throws the FENCED error when checkFenced says so. */
export function assertNotFenced(current: EpochDoc, self: AgentIdentity & { epoch: number | null }, site: string): void {
  const check = checkFenced(current, self, site);
  if (check.fenced) throw fenceCheckError(check, self);
}

/** Why onFenced (or onResume) runs, and what its environment tells it. */
export type OnFencedEvent =
  | {
      reason: 'fenced';
      site: string;
      /** This primary's epoch (null: not known). */
      epoch: number | null;
      /** The epoch epoch.json is at (null: not known). */
      filestoreEpoch?: number | null;
    }
  | {
      reason: 'switchover';
      site: string;
      epoch: number | null;
      switchoverId: string;
      standbyId: string;
      /** onResume only: why the switchover was called off. */
      calledOff?: string;
    };

/**
 * The environment onFenced and onResume run with (added to the agent's own): TANDEM_SITE,
 * TANDEM_EPOCH (empty when not known), TANDEM_REASON, and TANDEM_FILESTORE_EPOCH when fenced, or
 * TANDEM_SWITCHOVER_ID, TANDEM_STANDBY_ID (and TANDEM_SWITCHOVER_CALLED_OFF, cut to 2000
 * characters) for a switchover.
 */
export function onFencedEnv(e: OnFencedEvent): Record<string, string> {
  const base = { TANDEM_SITE: e.site, TANDEM_EPOCH: String(e.epoch ?? '') };
  if (e.reason === 'fenced') return { ...base, TANDEM_FILESTORE_EPOCH: String(e.filestoreEpoch ?? ''), TANDEM_REASON: 'fenced' };
  return {
    ...base,
    TANDEM_REASON: 'switchover',
    TANDEM_SWITCHOVER_ID: e.switchoverId,
    TANDEM_STANDBY_ID: e.standbyId,
    ...(e.calledOff === undefined ? {} : { TANDEM_SWITCHOVER_CALLED_OFF: e.calledOff.slice(0, 2000) }),
  };
}
