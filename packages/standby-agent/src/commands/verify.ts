import { TandemError, formatBytes, isTandemError, loadStandbyConfig, siteOption, openFilestore, requireFilestoreMarker, requireString, type Command } from '@tandem/shared';
import { runVerify } from '../verify/run-verify.js';

export const verifyCommand: Command = {
  name: 'verify',
  summary: 'restore drill: download, verify and read a set without touching the live site',
  help: `Usage: tandem-standby verify --config FILE [--site NAME] [--set ID] [--json]

The restore drill. For the newest committed set (or the named one): verifies the signatures of
latest.json and the manifest and the epoch, then downloads every artifact from the filestore
into the state directory (verify-*, removed at the end), checks its size and SHA-256 against the
signed manifest, and only then decrypts it with this standby's key and decompresses it; the dump
is read with \`pg_restore -l\`, the archives are listed. Nothing live changes, and no plain data
is written to disk. Every artifact is checked even after a failure.

A filestore without tandem-filestore.json at its root (see \`tandem-primary init --help\`) is
refused, exit 2: a missing filestore directory is never created.

Options:
  --config FILE  the standby agent's config (required)
  --site NAME    the site whose set to check, of a config with several (sites:,
                 sitesDir:); not needed when the config holds one site
  --set ID       check this set instead of the newest one
  --json         print the report as JSON

Exit status: 0 the set is restorable; 5 integrity problem (signature, checksum, key, archive);
1 other failure; 2 bad config or usage.`,
  options: { config: { type: 'string', short: 'c' }, site: { type: 'string' }, set: { type: 'string' }, json: { type: 'boolean' } },
  async run({ values, logger, out }) {
    const config = loadStandbyConfig(requireString(values, 'config', 'tandem-standby verify'), siteOption(values), 'tandem-standby verify');
    const filestore = openFilestore(config.filestore.location);
    try {
      await requireFilestoreMarker(filestore, { url: config.filestore.url });
      const r = await runVerify(config, { filestore, logger, setId: typeof values.set === 'string' ? values.set : undefined });
      const { firstError, ...report } = r;
      if (values.json === true) {
        out(JSON.stringify(report));
      } else {
        out(`set ${r.setId} (epoch ${r.epoch}, seq ${r.seq}, created ${r.createdAt}): ${r.ok ? 'OK' : 'FAILED'}`);
        for (const a of r.artifacts) {
          const detail = a.ok
            ? `${a.name === 'db' ? `${a.entries} TOC entries` : `${a.entries} entries, ${formatBytes(a.fileBytes ?? 0)} of file data`}, ${a.seconds} s`
            : a.error;
          out(`  ${a.ok ? 'ok  ' : 'FAIL'} ${a.name.padEnd(8)} ${formatBytes(a.storedBytes).padStart(10)}  ${detail}`);
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
