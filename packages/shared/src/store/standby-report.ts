import { z } from 'zod';
import { TandemError, isNotFound } from '../errors.js';
import type { Filestore } from '../filestore/filestore.js';
import { firstIssue, isoTime, setIdField as setId, standbyIdField as standbyId } from './fields.js';
import { layout } from './layout.js';

/**
 * <site>/standbys/<standbyId>.json (layout.standby): what a standby writes to the filestore after
 * each successful apply, and in WAL mode every few minutes besides (plain JSON, 2-space indent, trailing newline). Retention reads these, so
 * the rule "never delete a set a standby applied within the last day" holds without the WebSocket.
 * Unsigned: the standby has no signing key, and a forged report can only make retention keep a set
 * (or WAL) longer, never delete one. Unknown members are stripped: a newer standby may add some.
 *
 * `wal` (WAL mode; absent from older reports): the oldest WAL file the standby's cluster still needs
 * (the WAL file of its last restartpoint's redo), measured at `at`. Retention keeps the site's WAL
 * from there on while the measurement is recent.
 */
export const standbyWalNeedSchema = z.object({
  neededFrom: z.string().regex(/^[0-9A-F]{24}$/, 'expected a WAL file name such as 000000010000000000000003'),
  at: isoTime,
});
export type StandbyWalNeed = z.infer<typeof standbyWalNeedSchema>;

export const standbyReportSchema = z.object({
  format: z.literal('tandem-standby-report'),
  version: z.literal(1).default(1),
  standbyId,
  setId,
  createdAt: isoTime,
  appliedAt: isoTime,
  wal: standbyWalNeedSchema.optional(),
});
export type StandbyReport = z.infer<typeof standbyReportSchema>;

export function encodeStandbyReport(report: Omit<StandbyReport, 'format' | 'version'>): Buffer {
  const r = standbyReportSchema.safeParse({ format: 'tandem-standby-report', version: 1, ...report });
  if (!r.success) throw new TandemError('internal', 'STANDBY_REPORT_INVALID', `refusing to write an invalid standby report: ${firstIssue(r.error, '(message)')}`);
  const { format, version, standbyId: id, setId: set, createdAt, appliedAt, wal } = r.data;
  const doc = { format, version, standbyId: id, setId: set, createdAt, appliedAt, ...(wal === undefined ? {} : { wal: { neededFrom: wal.neededFrom, at: wal.at } }) };
  return Buffer.from(`${JSON.stringify(doc, null, 2)}\n`, 'utf8');
}

/** `label` names the object in errors (e.g. "file:///backups/demo/standbys/web2.json"). */
export function parseStandbyReport(raw: Buffer, label: string): StandbyReport {
  let value: unknown;
  try {
    value = JSON.parse(raw.toString('utf8'));
  } catch {
    throw new TandemError('integrity', 'STANDBY_REPORT_INVALID', `${label}: not valid JSON`);
  }
  const r = standbyReportSchema.safeParse(value);
  if (!r.success) throw new TandemError('integrity', 'STANDBY_REPORT_INVALID', `${label}: not a tandem standby report (${firstIssue(r.error, '(message)')})`);
  return r.data;
}

export interface StandbyReports {
  reports: StandbyReport[];
  /** Reports that could not be read or parsed, by key. */
  unreadable: Array<{ key: string; error: unknown }>;
}

/**
 * Every standby's report (one LIST of standbys/, then each `.json` read). A report removed between
 * the LIST and its read is skipped; one that cannot be read or parsed is returned under `unreadable`.
 */
export async function readStandbyReports(fs: Filestore, site: string, opts: { signal?: AbortSignal } = {}): Promise<StandbyReports> {
  const out: StandbyReports = { reports: [], unreadable: [] };
  for (const o of await fs.list(layout.standbys(site), opts)) {
    if (!o.key.endsWith('.json')) continue;
    try {
      const { body } = await fs.getBuffer(o.key, opts);
      out.reports.push(parseStandbyReport(body, `${fs.description}/${o.key}`));
    } catch (err) {
      if (isNotFound(err)) continue;
      out.unreadable.push({ key: o.key, error: err });
    }
  }
  return out;
}
