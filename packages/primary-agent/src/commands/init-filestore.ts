import { FILESTORE_MARKER_KEY, openFilestore, writeFilestoreMarker, type FilestoreLocation } from '@tandem/shared';

/** What `tandem-primary init --filestore` (or `--filestore-url`) did. */
export interface FilestoreInit {
  /** The filestore URL as configured or given. */
  url: string;
  /** False when it was a tandem filestore already (nothing was written). */
  created: boolean;
  /** When the filestore was created (its marker says). */
  createdAt: string;
}

/**
 * Makes the filestore at `location` a tandem filestore: writes its marker (tandem-filestore.json),
 * create-only. For a directory this is the one step that creates the directory itself (0700; its
 * parent must exist); an S3 bucket must exist. Run again, it finds the marker and changes nothing.
 */
export async function initFilestore(url: string, location: FilestoreLocation): Promise<FilestoreInit> {
  const fs = openFilestore(location);
  try {
    const { marker, created } = await writeFilestoreMarker(fs);
    return { url, created, createdAt: marker.createdAt };
  } finally {
    await fs.close();
  }
}

export function formatFilestoreInit(r: FilestoreInit): string {
  return r.created
    ? `Filestore ${r.url} created (${FILESTORE_MARKER_KEY} written): the agents may use it now.`
    : `Filestore ${r.url} is a tandem filestore already (created ${r.createdAt}): nothing changed.`;
}
