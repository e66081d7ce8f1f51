import { formatBytes, formatDuration, loadPrimaryConfig, openFilestore, requireFilestoreMarker, requireString, siteOption, type Command } from '@tandem/shared';
import { OBJECTS_GRACE_MS, type ObjectsGcOutcome, type Tally } from '../retention/objects-gc.js';
import { machineTimeZone, runRetention, type RetentionOutcome } from '../retention/run.js';
import { WAL_GRACE_MS, WAL_NEED_FRESH_MS, type WalGcOutcome, type WalTally } from '../retention/wal-gc.js';

const tally = (n: number, what: string, t: Tally): string => `${n} ${what} (${formatBytes(t.bytes)})`;

/** What became of the site's content objects, for people. */
export function formatObjectsGc(g: ObjectsGcOutcome): string[] {
  if (g.skipped !== undefined) return [`objects: not collected this time: ${g.skipped}`];
  if (g.blocked !== undefined) {
    return [`objects: NOT collected, none deleted: ${g.blocked}`, "objects: every committed set's manifest and files index must verify before an object may go; look at that set"];
  }
  const lines = [
    g.dryRun
      ? `objects: would delete ${tally(g.garbage.objects, 'unreferenced', g.garbage)}`
      : `objects: deleted ${tally(g.deleted.objects, 'unreferenced', g.deleted)}${g.failed > 0 ? `; ${g.failed} FAILED to delete (retried next time)` : ''}`,
    `objects: kept ${tally(g.referenced.objects, `referenced by ${g.sets} set(s)`, g.referenced)}, ${tally(g.young.objects, `unreferenced younger than ${formatDuration(g.graceMs)}`, g.young)}`,
  ];
  if (g.missing > 0) lines.push(`objects: ${g.missing} referenced by the sets are MISSING from the filestore: a standby cannot apply the sets that name them; make a new set`);
  if (g.strays > 0) lines.push(`objects: ${g.strays} key(s) under objects/ are not objects: left alone`);
  return lines;
}

const files = (t: WalTally, what = 'file(s)'): string => `${t.files} ${what} (${formatBytes(t.bytes)})`;

/** Where the WAL cutoff comes from: the oldest remaining set's start, and the standbys' needs. */
function walCutoffSources(w: WalGcOutcome): string {
  const parts: string[] = [];
  const set = w.oldestSet;
  if (set !== null) parts.push(set.startWalFile === w.cutoff ? `the oldest kept set's start, ${set.setId}` : `the oldest kept set, ${set.setId}, starts at ${set.startWalFile}`);
  for (const n of w.standbys) parts.push(`standby ${n.standbyId} needs from ${n.neededFrom}`);
  return parts.join('; ');
}

/** What became of the site's WAL files (WAL mode), for people. */
export function formatWalGc(w: WalGcOutcome): string[] {
  const lines: string[] = [];
  if (w.blocked !== undefined) {
    lines.push(`wal: NOT collected, none deleted: ${w.blocked}`, "wal: every committed set's manifest must verify before WAL may go; look at that set");
  } else if (w.cutoff === null) {
    lines.push(`wal: nothing deleted: ${w.skipped ?? 'no cutoff'} (WAL is kept until a WAL-mode set exists)`);
  } else {
    const head = w.dryRun ? `wal: would delete ${files(w.garbage)}` : `wal: deleted ${files(w.deleted)}`;
    lines.push(`${head} before ${w.cutoff} (${walCutoffSources(w)})${!w.dryRun && w.failed > 0 ? `; ${w.failed} FAILED to delete (retried next time)` : ''}`);
    lines.push(`wal: kept ${files(w.needed)} from ${w.cutoff} on, ${files(w.history, 'timeline history file(s)')}, ${files(w.young, `file(s) before it younger than ${formatDuration(w.graceMs)}`)}`);
    if (w.strays > 0) lines.push(`wal: ${w.strays} key(s) under wal/ are not WAL files: left alone`);
  }
  const fresh = formatDuration(WAL_NEED_FRESH_MS);
  for (const n of w.stale) lines.push(`wal: standby ${n.standbyId} last reported its WAL need (from ${n.neededFrom}) at ${n.at}, more than ${fresh} ago: not honoured`);
  if (w.unreadableReports > 0) lines.push(`wal: ${w.unreadableReports} standby report(s) could not be read: their WAL needs are not known (see the log)`);
  return lines;
}

export function formatRetention(o: RetentionOutcome): string[] {
  const lines: string[] = [];
  const failed = new Map(o.failed.map((f) => [f.setId, f.error]));
  const deleted = new Set(o.deleted);
  const rows = [
    ...o.plan.keep.map((d) => ({ ...d, action: d.unverified ? 'KEEP, UNVERIFIED' : 'keep' })),
    ...o.plan.delete.map((d) => ({
      ...d,
      action: o.dryRun ? 'would delete' : deleted.has(d.setId) ? 'deleted' : failed.has(d.setId) ? 'FAILED to delete' : 'delete',
    })),
  ].sort((a, b) => (a.setId < b.setId ? -1 : a.setId > b.setId ? 1 : 0));
  const width = Math.max(0, ...rows.map((r) => r.action.length));
  for (const r of rows) {
    const extra = failed.has(r.setId) ? ` (${failed.get(r.setId)})` : '';
    lines.push(`${r.action.padEnd(width)}  ${r.setId}  ${r.reasons.join('; ')}${r.committed ? '' : ' [uncommitted]'}${extra}`);
  }
  const unverified = o.plan.keep.filter((d) => d.unverified).length;
  if (unverified > 0) lines.push(`${unverified} set(s) whose manifest does not verify: kept, not deleted; look at them (who else writes to the filestore?)`);
  const n = o.plan.delete.length;
  if (n === 0) lines.push(`nothing to delete (${o.plan.keep.length} set(s) kept)`);
  else if (o.dryRun) lines.push(`dry run: ${n} set(s) would be deleted, ${o.plan.keep.length} kept; nothing was changed`);
  else lines.push(`${o.deleted.length} of ${n} set(s) deleted, ${o.plan.keep.length} kept`);
  if (o.objects) lines.push(...formatObjectsGc(o.objects));
  if (o.wal) lines.push(...formatWalGc(o.wal));
  return lines;
}

export const pruneCommand: Command = {
  name: 'prune',
  summary: 'apply the retention rules now: delete old sets (or show what would go)',
  help: `Usage: tandem-primary prune --config FILE [--site NAME] [--dry-run] [--json]

Applies the retention rules that \`tandem-primary run\` applies after every backup:
keeps the newest committed set of each of the last retention.daily calendar days and of each
of the last retention.weekly ISO weeks (days and weeks in the configured timezone), never
deletes the set latest.json names nor a set a standby reported applied within the last 24 h
(<site>/standbys/*.json), and deletes uncommitted leftovers older than 24 h. Every set is
listed with what happens to it and why. A set is deleted manifest first, so a deletion cut
short leaves an uncommitted leftover, never a damaged committed set.

Decisions are taken from signed data only, verified with the public half of keys.signingKeyFile:
when latest.json does not verify (or is missing while sets exist) nothing is deleted and prune
fails; a set whose manifest does not verify is listed as UNVERIFIED and kept.

With keys.filesKeyFile (files as content objects), prune then deletes the objects under
<site>/objects/ that no remaining committed set's files index references, once they are older
than ${formatDuration(OBJECTS_GRACE_MS)} (a younger one may belong to a backup not yet committed). References are read
from signed data only: if any committed set's manifest or files index cannot be read or
verified, no object is deleted (exit 1, naming the set). Nothing is collected while a backup
of the site runs on this host. Objects go one at a time: an interrupted prune leaves garbage
for the next one, never a set missing an object.

In WAL mode (database.mode: wal), prune then deletes the WAL files under <site>/wal/ that no
remaining set and no standby needs: those whose name (timeline, then position) sorts before
the cutoff. The cutoff is the smallest of the remaining WAL-mode sets' first WAL files (their
signed manifests' database.startWalFile) and of the WAL needs the standbys reported within the
last ${formatDuration(WAL_NEED_FRESH_MS)} (standbys/<id>.json, wal.neededFrom: their cluster's last restartpoint; a standby
reports it every few minutes). A file goes only once older than ${formatDuration(WAL_GRACE_MS)}, its signed document
before its body; timeline history files are never deleted. If a committed set's manifest does
not verify, no WAL is deleted (exit 1, naming the set); while no committed set is a WAL-mode
set, none is deleted either.

A filestore without tandem-filestore.json at its root (see \`tandem-primary init --help\`) is
refused, exit 2: a missing filestore directory is never created.

Options:
  --config FILE  the primary agent's config (required)
  --site NAME    the site whose sets to prune, of a config with several (sites:, sitesDir:); not
                 needed when the config holds one site
  --dry-run      say what would be deleted and why; delete nothing
  --json         print {dryRun, keep: [...], delete: [...], deleted, failed, unverified, objects,
                 wal} as JSON; objects is null without a files key, else {dryRun, graceMs, skipped?,
                 blocked?, sets, stored, referenced, young, garbage, deleted, failed, missing,
                 strays}, each tally {objects, bytes}; wal is null outside WAL mode, else {dryRun,
                 graceMs, cutoff, oldestSet: {setId, startWalFile} | null, standbys: [{standbyId,
                 neededFrom, at}], stale: [...], unreadableReports, skipped?, blocked?, sets,
                 stored, history, needed, young, garbage, deleted, failed, strays}, each tally
                 {files, bytes}

Exit status: 0 done; 1 a filestore error, a set, an object or a WAL file could not be deleted,
or objects or WAL were not collected because a set's manifest or references could not be read;
2 bad config or usage; 5 latest.json does not verify (nothing deleted).`,
  options: { config: { type: 'string', short: 'c' }, site: { type: 'string' }, 'dry-run': { type: 'boolean' }, json: { type: 'boolean' } },
  async run({ values, logger, out }) {
    const config = loadPrimaryConfig(requireString(values, 'config', 'tandem-primary prune'), siteOption(values), 'tandem-primary prune');
    const filestore = openFilestore(config.filestore.location);
    try {
      await requireFilestoreMarker(filestore, { url: config.filestore.url });
      const outcome = await runRetention(config, {
        filestore,
        logger,
        dryRun: values['dry-run'] === true,
        timeZone: config.timezone ?? machineTimeZone(),
      });
      if (values.json === true) {
        out(
          JSON.stringify({
            dryRun: outcome.dryRun,
            keep: outcome.plan.keep,
            delete: outcome.plan.delete,
            deleted: outcome.deleted,
            failed: outcome.failed,
            unverified: outcome.plan.keep.filter((d) => d.unverified).map((d) => d.setId),
            objects: outcome.objects,
            wal: outcome.wal,
          }),
        );
      } else {
        for (const line of formatRetention(outcome)) out(line);
      }
      const g = outcome.objects;
      const w = outcome.wal;
      return outcome.failed.length > 0 || (g !== null && (g.blocked !== undefined || g.failed > 0)) || (w !== null && (w.blocked !== undefined || w.failed > 0)) ? 1 : 0;
    } finally {
      await filestore.close();
    }
  },
};
