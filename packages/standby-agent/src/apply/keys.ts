import { TandemError, loadIdentities, type Logger, type Manifest, type StandbyConfig } from '@tandem/shared';

/**
 * The age identities a set needs. A standby that expects encryption refuses an unencrypted set: a
 * primary misconfigured to upload plaintext must not go unnoticed.
 */
export function identitiesFor(config: StandbyConfig, manifest: Manifest, logger: Logger): string[] {
  const encrypted = manifest.artifacts.some((a) => a.encryption === 'age');
  if (!encrypted) {
    if (config.encryption === 'age') {
      throw new TandemError('integrity', 'SET_UNENCRYPTED', `set ${manifest.setId} is not encrypted, but this standby expects age-encrypted sets`, {
        hint: 'if the primary is meant to upload unencrypted sets (encryption: none), say `encryption: none` in this config too',
      });
    }
    return [];
  }
  if (config.keys.identityFile === undefined) {
    throw new TandemError('config', 'NO_IDENTITY', `set ${manifest.setId} is encrypted, but the config has no keys.identityFile`, {
      hint: "point keys.identityFile at the site's backup.agekey",
    });
  }
  return loadIdentities(config.keys.identityFile, logger);
}
