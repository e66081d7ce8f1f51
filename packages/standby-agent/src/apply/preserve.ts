import { cp, lstat, mkdir, readdir, rm, stat } from 'node:fs/promises';
import { dirname, join, relative, sep } from 'node:path';

/**
 * The standby's own config files (config.preserve globs, and the sentinel when it lives in the config
 * dir) survive an apply: the set's copies of those paths are removed from the staged config, and the
 * live ones are copied in. So a primary's db.yml never lands on the standby, even when the standby has
 * none of its own.
 *
 * Globs are relative to the config dir: `*` and `?` stay within one path segment, `**` spans any
 * number of segments; a glob that matches a directory carries the whole directory.
 */
export function globToRegExp(glob: string): RegExp {
  glob = glob.replace(/^\.\//, '');
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const ch = glob[i]!;
    if (ch === '*') {
      if (glob[i + 1] === '*') {
        i++;
        if (glob[i + 1] === '/') {
          i++;
          re += '(?:.*/)?';
        } else {
          re += '.*';
        }
      } else {
        re += '[^/]*';
      }
    } else if (ch === '?') {
      re += '[^/]';
    } else {
      re += ch.replace(/[.+^${}()|[\]\\]/g, '\\$&');
    }
  }
  return new RegExp(`^${re}$`);
}

export interface PreserveRules {
  globs: string[];
  /** Exact relative paths (the sentinel). */
  paths: string[];
}

function matcher(rules: PreserveRules): (rel: string) => boolean {
  const res = rules.globs.map(globToRegExp);
  const exact = new Set(rules.paths);
  return (rel) => exact.has(rel) || res.some((r) => r.test(rel));
}

/** Relative paths under `root` that match, not descending into matches. */
async function matches(root: string, match: (rel: string) => boolean): Promise<string[]> {
  const out: string[] = [];
  async function walk(dir: string): Promise<void> {
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    for (const name of names) {
      const abs = join(dir, name);
      const rel = relative(root, abs).split(sep).join('/');
      if (match(rel)) {
        out.push(rel);
        continue;
      }
      if ((await lstat(abs)).isDirectory()) await walk(abs);
    }
  }
  await walk(root);
  return out;
}

/** Returns the relative paths carried over from `live` into `next`. */
export async function carryOver(live: string, next: string, rules: PreserveRules): Promise<string[]> {
  if (rules.globs.length === 0 && rules.paths.length === 0) return [];
  const match = matcher(rules);
  for (const rel of await matches(next, match)) await rm(join(next, rel), { recursive: true, force: true });
  const kept = await matches(live, match);
  for (const rel of kept) {
    const parent = dirname(rel);
    if (parent !== '.') {
      const mode = (await stat(join(live, parent))).mode & 0o777;
      await realDirs(next, parent, mode);
    }
    await cp(join(live, rel), join(next, rel), { recursive: true, preserveTimestamps: true, verbatimSymlinks: true, errorOnExist: false, force: true });
  }
  return kept;
}

/**
 * Makes every component of `rel` under `root` a real directory. The set's config may hold a symlink
 * (to anywhere: links are carried whatever their target) where the standby keeps preserved files of
 * its own: it is replaced by a directory (rm removes the link, not what it points at), so that the
 * copy never writes through a link into whatever it points at.
 */
async function realDirs(root: string, rel: string, mode: number): Promise<void> {
  let dir = root;
  for (const part of rel.split('/')) {
    dir = join(dir, part);
    const st = await lstat(dir).catch(() => undefined);
    if (st?.isDirectory()) continue;
    if (st) await rm(dir, { recursive: true, force: true });
    await mkdir(dir, { mode });
  }
}

/** The sentinel's path relative to the config dir, if it lives inside it. */
export function relativeInside(dir: string, file: string): string | undefined {
  const rel = relative(dir, file);
  if (rel === '' || rel.startsWith('..') || rel.startsWith(sep)) return undefined;
  return rel.split(sep).join('/');
}
