/**
 * Where things live in a filestore. Every key is relative to the filestore's own prefix.
 *
 *   tandem-filestore.json               the marker: this is a tandem filestore (marker.ts)
 *   <site>/epoch.json
 *   <site>/latest.json
 *   <site>/heartbeat.json
 *   <site>/sets/<set-id>/{db.dump.zst.age, dbmeta.json.zst.age, config.tar.zst.age, security.tar.zst.age, files.tar.zst.age, manifest.json}
 *     (files.tar.age when the files do not compress: compression "none" in the manifest)
 *     (files.index.zst.age instead of files.tar...: the files index, when the site has a files key)
 *   <site>/objects/<xx>/<object-id>    content objects (packs of file blobs, cas/pack.ts), shared by sets
 *   <site>/deltas/<set-id>/<n>.json     files deltas on top of a set (cas/delta.ts): new and changed files
 *   <site>/standbys/<standby-id>.json   each standby's report of the set it applied (retention reads them)
 *   tandem-check-<id>.probe             written and deleted at once by `tandem-primary check`
 */
/**
 * In the order the primary makes them (the database before the files: ordering rule 1).
 * `dbmeta` is what the dump does not carry: the database's own owner, grants, comment and settings,
 * the roles the set needs, extension versions (and, with `database.roles: carry`, role definitions).
 */
export const ARTIFACT_NAMES = ['db', 'dbmeta', 'config', 'security', 'files'] as const;
export type ArtifactName = (typeof ARTIFACT_NAMES)[number];
/** Artifacts a set made by an earlier tandem may lack; everything else is required. */
export const OPTIONAL_ARTIFACTS: readonly ArtifactName[] = ['dbmeta'];
/** The archives unpacked into a directory of the site. */
export const DIR_ARTIFACTS = ['config', 'security', 'files'] as const;
export type DirArtifactName = (typeof DIR_ARTIFACTS)[number];

export function artifactFileName(name: ArtifactName, encrypted: boolean, compressed = true, filesIndex = false): string {
  const base = name === 'db' ? 'db.dump' : name === 'dbmeta' ? 'dbmeta.json' : name === 'files' && filesIndex ? 'files.index' : `${name}.tar`;
  return `${base}${compressed ? '.zst' : ''}${encrypted ? '.age' : ''}`;
}

export const layout = {
  site: (site: string) => `${site}/`,
  epoch: (site: string) => `${site}/epoch.json`,
  latest: (site: string) => `${site}/latest.json`,
  heartbeat: (site: string) => `${site}/heartbeat.json`,
  sets: (site: string) => `${site}/sets/`,
  set: (site: string, setId: string) => `${site}/sets/${setId}/`,
  artifact: (site: string, setId: string, file: string) => `${site}/sets/${setId}/${file}`,
  manifest: (site: string, setId: string) => `${site}/sets/${setId}/manifest.json`,
  objects: (site: string) => `${site}/objects/`,
  deltas: (site: string) => `${site}/deltas/`,
  /** The n-th files delta on top of a set (cas/delta.ts): a standby GETs it by name, never lists. */
  delta: (site: string, setId: string, n: number) => `${site}/deltas/${setId}/${String(n).padStart(6, '0')}.json`,
  standbys: (site: string) => `${site}/standbys/`,
  standby: (site: string, standbyId: string) => `${site}/standbys/${standbyId}.json`,
  /**
   * The one object `tandem-primary check` writes, and deletes at once, to prove the filestore takes
   * writes: at the top, beside no site's keys, so that deleting it leaves no emptied directory behind.
   */
  checkProbe: (id: string) => `tandem-check-${id}.probe`,
};

const SET_ID = /^(\d{8}T\d{6}Z)-e(\d+)-(\d{6,})$/;

/** Set ids sort by time as strings: 20261122T030000Z-e1-000042 (UTC time, epoch, sequence). */
export function makeSetId(time: Date, epoch: number, seq: number): string {
  const stamp = time.toISOString().replace(/[-:]/g, '').replace(/\.\d{3}Z$/, 'Z');
  return `${stamp}-e${epoch}-${String(seq).padStart(6, '0')}`;
}

export function parseSetId(id: string): { time: Date; epoch: number; seq: number } | null {
  const m = SET_ID.exec(id);
  if (!m) return null;
  const s = m[1]!;
  const iso = `${s.slice(0, 4)}-${s.slice(4, 6)}-${s.slice(6, 8)}T${s.slice(9, 11)}:${s.slice(11, 13)}:${s.slice(13, 15)}Z`;
  return { time: new Date(iso), epoch: Number(m[2]), seq: Number(m[3]) };
}

export const isSetId = (id: string): boolean => SET_ID.test(id);
