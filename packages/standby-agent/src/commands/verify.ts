import { TandemError, formatBytes, isTandemError, loadStandbyConfig, siteOption, openFilestore, requireFilestoreMarker, requireString, type Command } from '@tandem/shared';
import { runVerify, type ArtifactCheck } from '../verify/run-verify.js';

/** Failed objects printed one a line; --json lists them all. */
const PROBLEMS_SHOWN = 20;

export const verifyCommand: Command = {
  name: 'verify',
  summary: 'restore drill: download, verify and read a set without touching the live site',
  help: `Usage: tandem-standby verify --config FILE [--site NAME] [--set ID] [--read-data] [--json]

The restore drill. For the newest committed set (or the named one): verifies the signatures of
latest.json and the manifest and the epoch, then downloads every artifact from the filestore
into the state directory (verify-*, removed at the end), checks its size and SHA-256 against the
signed manifest, and only then decrypts it with this standby's key and decompresses it; the dump
is read with \`pg_restore -l\`, the archives are listed. Nothing live changes, and no plain data
is written to disk. Every artifact is checked even after a failure.

A set whose files are content objects (keys.filesKeyFile): its files index is read to the end
and checked by every rule an apply checks, and its entries, files, bytes and packs reported.
Its objects (packs, under <site>/objects/) are only LISTED: one listing per objects/<xx>/
directory the set uses (at most 256), each pack must be there with the stored size the signed
index gives. Nothing of them is downloaded, so a pack altered in place, or replaced by one of
the same size, is not seen: --read-data downloads every pack and checks it as an apply does
(size and SHA-256 against the signed index before it is decrypted, inflated to exactly its
signed size, every blob the set uses against its id under the files key), two packs at a time:
memory stays a few packs, never the set. Every object is checked after a failure too, and each
failed one is named with the files that use it.

A filestore without tandem-filestore.json at its root (see \`tandem-primary init --help\`) is
refused, exit 2: a missing filestore directory is never created.

Options:
  --config FILE  the standby agent's config (required)
  --site NAME    the site whose set to check, of a config with several (sites:,
                 sitesDir:); not needed when the config holds one site
  --set ID       check this set instead of the newest one
  --read-data    files as content objects: download and check every pack the set uses
                 (about as many bytes as its files); without it the packs are listed
  --json         print the report as JSON

Exit status: 0 the set is restorable; 5 integrity problem (signature, checksum, key, archive,
object); 1 other failure; 2 bad config or usage.`,
  options: { config: { type: 'string', short: 'c' }, site: { type: 'string' }, set: { type: 'string' }, 'read-data': { type: 'boolean' }, json: { type: 'boolean' } },
  async run({ values, logger, out }) {
    const config = loadStandbyConfig(requireString(values, 'config', 'tandem-standby verify'), siteOption(values), 'tandem-standby verify');
    const filestore = openFilestore(config.filestore.location);
    try {
      await requireFilestoreMarker(filestore, { url: config.filestore.url });
      const r = await runVerify(config, { filestore, logger, setId: typeof values.set === 'string' ? values.set : undefined, readData: values['read-data'] === true });
      const { firstError, ...report } = r;
      if (values.json === true) {
        out(JSON.stringify(report));
      } else {
        out(`set ${r.setId} (epoch ${r.epoch}, seq ${r.seq}, created ${r.createdAt}): ${r.ok ? 'OK' : 'FAILED'}`);
        for (const a of r.artifacts) {
          const what = a.name === 'db' ? `${a.entries} TOC entries` : a.name === 'dbmeta' ? `${a.entries} roles` : `${a.entries} entries, ${formatBytes(a.fileBytes ?? 0)} of file data`;
          const detail = a.ok ? `${what}${indexDetail(a)}, ${a.seconds} s` : a.error;
          out(`  ${a.ok ? 'ok  ' : 'FAIL'} ${a.name.padEnd(8)} ${formatBytes(a.storedBytes).padStart(10)}  ${detail}`);
          const problems = a.objects?.problems ?? [];
          for (const p of problems.slice(0, PROBLEMS_SHOWN)) {
            const users = p.files.length === 0 ? '' : `; used by ${p.files.map((f) => JSON.stringify(f)).join(', ')}${p.moreFiles > 0 ? ` and ${p.moreFiles} more` : ''}`;
            out(`         ${p.error.includes(p.id) ? p.error : `object ${p.id}: ${p.error}`}${users}`);
          }
          if (problems.length > PROBLEMS_SHOWN) out(`         and ${problems.length - PROBLEMS_SHOWN} more objects (--json lists them all)`);
        }
      }
      if (!r.ok) {
        const failed = r.artifacts.filter((a) => !a.ok).map((a) => a.name);
        const kind = isTandemError(firstError) ? firstError.kind : 'integrity';
        throw new TandemError(kind, 'VERIFY_FAILED', `set ${r.setId} is not restorable: ${failed.join(', ')} failed the drill (details above)`);
      }
    } finally {
      await filestore.close();
    }
  },
};

/** A files index: its files and packs, and what was checked of the packs. */
function indexDetail(a: ArtifactCheck): string {
  if (!a.index || !a.objects) return '';
  const o = a.objects;
  const checked = o.mode === 'read' ? `${o.packs} read and checked (${formatBytes(o.bytes)}, ${o.blobs} blobs)` : `${o.packs} listed with their signed sizes`;
  return `; ${a.index.files} files in ${a.index.packs} packs (${formatBytes(a.index.packBytes)} stored), ${checked}`;
}
