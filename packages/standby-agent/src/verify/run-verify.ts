import { chmod, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import {
  ARTIFACT_NAMES,
  TandemError,
  describeError,
  isTandemError,
  listTar,
  loadFilesKeyFile,
  parseDbMeta,
  loadVerifyKeyFile,
  type Filestore,
  type Logger,
  type Manifest,
  type StandbyConfig,
  OBJECT_HINT,
} from '@tandem/shared';
import { artifactLabel, streamArtifact, type ArtifactSource } from '../apply/artifact-stream.js';
import { identitiesFor } from '../apply/keys.js';
import { resolveSet } from '../apply/resolve-set.js';
import { artifactEntries, type ArtifactEntries } from '../apply/stage.js';
import { checkFilesIndex, type IndexSummary, type ObjectsCheck } from './files-index.js';
import { listDump } from './list-dump.js';

export interface ArtifactCheck {
  name: string;
  file: string;
  storedBytes: number;
  ok: boolean;
  /** TOC entries of the dump, or archive entries. */
  entries?: number;
  /** Bytes of regular files in an archive or a files index. */
  fileBytes?: number;
  /** A files index (files as content objects): what it lists. */
  index?: IndexSummary;
  /** A files index: what was checked of its objects (packs), and every one that failed. */
  objects?: ObjectsCheck;
  seconds?: number;
  error?: string;
}

export interface VerifyReport {
  setId: string;
  site: string;
  epoch: number;
  seq: number;
  createdAt: string;
  ok: boolean;
  artifacts: ArtifactCheck[];
  /** The first failure, for the exit status. */
  firstError?: unknown;
}

export interface VerifyOptions {
  filestore: Filestore;
  logger: Logger;
  setId?: string;
  /** A files index: download and open every pack and check every blob, not only list the packs. */
  readData?: boolean;
}

/**
 * The restore drill: everything an apply checks, touching nothing live. Like an apply, it verifies
 * each artifact's stored bytes before it decrypts or reads any of them, so each is downloaded first
 * into a scratch dir in the state dir (0700, `verify-*`; stored, still encrypted bytes only, one
 * artifact at a time; removed at the end). The plain data is only read, never written.
 * The signature, epoch and manifest must hold for anything to be checked; after that every artifact
 * is checked even when an earlier one failed, so one run lists every problem. A files index and
 * its objects (packs): files-index.ts.
 */
export async function runVerify(config: StandbyConfig, opts: VerifyOptions): Promise<VerifyReport> {
  const verifyKey = loadVerifyKeyFile(config.keys.verifyKeyFile);
  const { manifest } = await resolveSet(opts.filestore, config.site, verifyKey, opts.setId);
  const identities = identitiesFor(config, manifest, opts.logger);
  const entries = artifactEntries(manifest);
  const report: VerifyReport = {
    setId: manifest.setId,
    site: manifest.site,
    epoch: manifest.epoch,
    seq: manifest.seq,
    createdAt: manifest.createdAt,
    ok: true,
    artifacts: [],
  };
  await mkdir(config.stateDir, { recursive: true, mode: 0o700 });
  const scratch = await mkdtemp(join(config.stateDir, 'verify-'));
  try {
    await chmod(scratch, 0o700);
    await checkArtifacts(config, { ...opts, manifest, identities, entries, report, scratch });
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
  return report;
}

async function checkArtifacts(
  config: StandbyConfig,
  o: VerifyOptions & { manifest: Manifest; identities: string[]; entries: ArtifactEntries; report: VerifyReport; scratch: string },
): Promise<void> {
  const { manifest, identities, entries, report } = o;
  for (const name of ARTIFACT_NAMES) {
    const entry = entries[name];
    if (entry === undefined) continue; // optional, absent from sets made by an earlier tandem
    const check: ArtifactCheck = { name, file: entry.file, storedBytes: entry.storedSize, ok: false };
    const label = artifactLabel(manifest, entry);
    try {
      const src = { filestore: o.filestore, manifest, entry, identities };
      if (entry.kind === 'files-index') {
        await verifyFilesIndex(config, o, src, check);
      } else {
        const r = await streamArtifact(src, o.scratch, async (plain) => {
          if (name === 'db') {
            check.entries = (await listDump(plain, config.database, label)).entries;
          } else if (name === 'dbmeta') {
            const chunks: Buffer[] = [];
            for await (const c of plain) chunks.push(c as Buffer);
            check.entries = parseDbMeta(Buffer.concat(chunks), label).roles.length;
          } else {
            const list = await listTar(plain, { label });
            check.entries = list.length;
            check.fileBytes = list.reduce((n, e) => n + (e.type === 'File' || e.type === 'OldFile' || e.type === 'ContiguousFile' ? e.size : 0), 0);
          }
        });
        check.seconds = r.seconds;
      }
      check.ok = true;
      o.logger.info({ artifact: name, entries: check.entries, seconds: check.seconds }, 'artifact verified');
    } catch (err) {
      report.ok = false;
      report.firstError ??= err;
      check.error = describeError(err);
      o.logger.error({ artifact: name, code: isTandemError(err) ? err.code : undefined }, check.error);
    }
    report.artifacts.push(check);
  }
}

/** A files index and its objects (files-index.ts): `check` filled in; throws when an object failed. */
async function verifyFilesIndex(config: StandbyConfig, o: VerifyOptions & { scratch: string }, src: ArtifactSource, check: ArtifactCheck): Promise<void> {
  const r = await checkFilesIndex(src, {
    scratch: o.scratch,
    maxEntries: config.limits.maxEntries,
    ...(config.limits.maxBytes === undefined ? {} : { maxBytes: config.limits.maxBytes }),
    readData: o.readData === true,
    filesKey: config.keys.filesKeyFile === undefined ? null : loadFilesKeyFile(config.keys.filesKeyFile, o.logger),
    configFile: config.configFile,
    logger: o.logger,
  });
  Object.assign(check, { entries: r.entries, fileBytes: r.fileBytes, seconds: r.seconds, index: r.index, objects: r.objects });
  if (r.firstError === undefined) return;
  const failed = r.objects.problems;
  const first = r.firstError;
  throw new TandemError(
    isTandemError(first) ? first.kind : 'integrity',
    'OBJECTS_FAILED',
    `${artifactLabel(src.manifest, src.entry)}: ${failed.length} of ${r.index.packs} objects failed the check (${r.objects.mode === 'read' ? 'read' : 'listed, not read'}): ${failed
      .slice(0, 3)
      .map((p) => p.id)
      .join(', ')}${failed.length > 3 ? ', ...' : ''}`,
    { cause: first, hint: !isTandemError(first) || first.kind === 'integrity' ? OBJECT_HINT : first.hint },
  );
}
