/**
 * The rules every tar entry must pass, decided from the archive alone (extract.ts lists them with
 * what the file system adds). The standby's extractor applies them to what it restores, and the
 * same rules (EntryRules) check the primary's own archives as they are made (createTarCheck):
 * whatever a standby would refuse fails the backup there, naming the entry, and is never committed.
 */
import { TandemError } from '../errors.js';

const UNSAFE = 'ARCHIVE_UNSAFE_ENTRY';

/** Path segments without '' and '.': "./a//b/" -> ["a", "b"]. */
const split = (p: string): string[] => p.split('/').filter((s) => s !== '' && s !== '.');
export const normalize = (p: string): string => split(p).join('/');

/**
 * What the extractor refuses, decided from the archive alone (paths, types, link targets and the
 * entries before): shared by extractTarSafe and by the primary's check of its own archives, so the
 * two cannot disagree. `check` returns why an entry must be refused, or records it and returns
 * undefined. (The extractor also lets the file system refuse what already exists.)
 */
export class EntryRules {
  /** Paths (relative, normalized) of the symlinks and directories so far. */
  readonly #symlinks = new Set<string>();
  readonly #dirs = new Set<string>();

  check(e: { path: string; type: string; linkpath?: string }): string | undefined {
    const why = this.#pathProblem(e.path);
    if (why !== undefined) return `path ${why}`;
    const rel = normalize(e.path);
    if (rel === '' && e.type !== 'Directory') return `a ${e.type} cannot replace the target directory`;
    switch (e.type) {
      case 'File':
      case 'OldFile':
      case 'ContiguousFile':
        return undefined;
      case 'Directory':
        this.#dirs.add(rel);
        return undefined;
      case 'SymbolicLink': {
        const target = e.linkpath ?? '';
        if (target === '' || target.includes('\0')) return 'symlink without a valid target';
        this.#symlinks.add(rel);
        return undefined;
      }
      case 'Link': {
        const linkpath = e.linkpath ?? '';
        const bad = this.#pathProblem(linkpath);
        if (bad !== undefined) return `hardlink target ${JSON.stringify(linkpath)} ${bad}`;
        const target = normalize(linkpath);
        if (target === '' || this.#dirs.has(target)) return `hardlink target ${JSON.stringify(linkpath)} is missing or not a regular file from this archive`;
        return undefined;
      }
      default:
        // CharacterDevice, BlockDevice, FIFO, GNUDumpDir: nothing a site backup needs.
        return `${e.type} entries are not allowed`;
    }
  }

  /** Why an archive path is unsafe, or undefined: absolute, `..`, NUL, or is/passes through a symlink. */
  #pathProblem(p: string): string | undefined {
    if (p.startsWith('/')) return 'is absolute';
    if (p.includes('\0')) return 'contains a NUL byte';
    const parts = split(p);
    if (parts.includes('..')) return "contains '..'";
    for (let i = 1; i <= parts.length; i++) {
      const prefix = parts.slice(0, i).join('/');
      if (this.#symlinks.has(prefix)) {
        return i < parts.length ? `passes through the symlink ${JSON.stringify(prefix)}` : `is the symlink ${JSON.stringify(prefix)}`;
      }
    }
    return undefined;
  }
}

export function unsafe(label: string, entryPath: string, why: string): TandemError {
  return new TandemError('integrity', UNSAFE, `${label}: refusing archive entry ${JSON.stringify(entryPath)}: ${why}`, {
    hint: 'tandem does not restore such an entry, and a primary of this version refuses to back one up: the set was made by an older one; nothing outside the target was written',
  });
}
