import { TandemError, isNotFound, isPrecondition } from './errors.js';
import type { Filestore } from './filestore/filestore.js';
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

export function parseEpoch(raw: Buffer, label: string): EpochDoc {
  let doc: Partial<EpochDoc>;
  try {
    doc = JSON.parse(raw.toString('utf8')) as Partial<EpochDoc>;
  } catch {
    throw new TandemError('integrity', 'EPOCH_INVALID', `${label}: not valid JSON`);
  }
  if (
    doc === null ||
    typeof doc !== 'object' ||
    doc.format !== 'tandem-epoch' ||
    typeof doc.epoch !== 'number' ||
    !Number.isInteger(doc.epoch) ||
    doc.epoch < 1 ||
    typeof doc.primaryHost !== 'string' ||
    (doc.primaryId !== undefined && (typeof doc.primaryId !== 'string' || doc.primaryId === ''))
  ) {
    throw new TandemError('integrity', 'EPOCH_INVALID', `${label}: not a tandem epoch document`);
  }
  return doc as EpochDoc;
}

const encode = (doc: EpochDoc): Buffer => Buffer.from(`${JSON.stringify(doc, null, 2)}\n`);

/** The current epoch record and its version, or null when the site has none yet. */
export async function readEpoch(fs: Filestore, site: string): Promise<{ doc: EpochDoc; version: string } | null> {
  const key = layout.epoch(site);
  try {
    const { body, info } = await fs.getBuffer(key);
    return { doc: parseEpoch(body, `${fs.description}/${key}`), version: info.version };
  } catch (err) {
    if (isNotFound(err)) return null;
    throw err;
  }
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
  const found = await readEpoch(fs, site);
  if (found) return { doc: found.doc, created: false };
  const doc: EpochDoc = { format: 'tandem-epoch', version: 1, epoch: 1, primaryHost: self.host, primaryId: self.id, since: now.toISOString() };
  try {
    await fs.writeConditional(layout.epoch(site), encode(doc), { ifAbsent: true });
    return { doc, created: true };
  } catch (err) {
    if (!isPrecondition(err)) throw err;
    const again = await readEpoch(fs, site); // someone else created it first: theirs counts
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
  const current = await readEpoch(fs, site);
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
    await fs.writeConditional(layout.epoch(site), encode(doc), current ? { ifVersion: current.version } : { ifAbsent: true });
    return doc;
  } catch (err) {
    if (!isPrecondition(err)) throw err;
    const winner = await readEpoch(fs, site).catch(() => null);
    throw new TandemError(
      'precondition',
      'PROMOTE_RACE_LOST',
      `another server changed epoch.json of site "${site}" first${winner ? `: ${winner.doc.primaryHost} is primary in epoch ${winner.doc.epoch} since ${winner.doc.since}` : ''}`,
      { hint: 'this server stays a standby; check which server is serving the site', cause: err },
    );
  }
}

/**
 * Throws 'fenced' when the filestore names another primary than `self`: a higher epoch, or the same
 * epoch for another agent (whatever its host name). The message says by whom and when.
 */
export function assertNotFenced(current: EpochDoc, self: AgentIdentity & { epoch: number }, site: string): void {
  if (current.epoch < self.epoch) return;
  if (current.epoch === self.epoch && namesAgent(current, self)) return;
  const sameName = current.primaryHost === self.host;
  throw new TandemError(
    'fenced',
    'FENCED',
    `this primary (${who(self.host, sameName ? self.id : undefined, current.primaryHost)}, epoch ${self.epoch}) has been fenced: ${who(current.primaryHost, current.primaryId, self.host)} became primary of site "${site}" in epoch ${current.epoch} at ${current.since}${current.reason ? ` (${current.reason})` : ''}; no more uploads`,
    {
      hint:
        'the site now runs elsewhere: stop this primary; to make this server follow, run `tandem-standby run` here' +
        (sameName && current.primaryId !== undefined
          ? `. If this is the server that was promoted, run tandem-primary with the standby's stateDir (or a copy of its agent-id file, which holds ${current.primaryId})`
          : ''),
    },
  );
}
