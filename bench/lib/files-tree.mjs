// What bench:files needs beyond the shared helpers: a site whose files are content objects (keys.
// filesKeyFile), a tiny database (the runs measure files, not the dump), a working copy of the cached
// files tree that a run may change and put back, the 1% change itself with its changed bytes counted
// independently of tandem, a tree of many small files (generated once, kept for re-runs), and sizes
// and counts of what a directory filestore or a restic repository holds.
import { spawnSync } from 'node:child_process';
import { randomBytes, randomFillSync, createHash } from 'node:crypto';
import {
  closeSync,
  copyFileSync,
  existsSync,
  lstatSync,
  linkSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  readdirSync,
  readlinkSync,
  renameSync,
  rmSync,
  unlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { MIB, databaseExists, log, psql } from './common.mjs';
import { makeSite } from './site.mjs';

export const SMALL_TREE_VERSION = 1;

/** Small seeded PRNG (mulberry32), as dataset.mjs uses: the same shapes on every run and machine. */
export function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Makes sure database `db` exists with one small table (a few KB): the site needs a database, and
 * its dump must not weigh in the files' figures.
 */
export function ensureTinyDatabase(db) {
  if (databaseExists(db)) {
    try {
      if (psql(db, 'SELECT count(*) FROM bench_files_note') === '100') return;
    } catch {
      /* made differently: made again below */
    }
    psql('postgres', `DROP DATABASE IF EXISTS "${db}" WITH (FORCE)`);
  }
  log(`creating the tiny database ${db} (one table of 100 rows)`);
  psql('postgres', `CREATE DATABASE "${db}"`);
  psql(db, "CREATE TABLE bench_files_note (id int PRIMARY KEY, note text NOT NULL); INSERT INTO bench_files_note SELECT g, 'note ' || g FROM generate_series(1, 100) g");
}

/**
 * makeSite (site.mjs) with the files as content objects: keys.filesKeyFile (files.agekey, made by
 * `tandem-primary init --keys-dir`, the same file for both agents) added to both configs.
 */
export function makeFilesSite(opts) {
  const site = makeSite(opts);
  const keyFile = join(site.dir, 'keys', 'files.agekey');
  if (!existsSync(keyFile)) throw new Error(`tandem-primary init --keys-dir made no ${keyFile}: this version has no files key`);
  for (const config of [site.primaryConfig, site.standbyConfig]) {
    const text = readFileSync(config, 'utf8');
    if (!/^keys:\n/m.test(text)) throw new Error(`${config}: no "keys:" block to add keys.filesKeyFile to`);
    writeFileSync(config, text.replace(/^keys:\n/m, 'keys:\n  filesKeyFile: ./keys/files.agekey\n'));
  }
  site.standbyFilesDir = join(site.dir, 'standby', 'files');
  return site;
}

/**
 * A working copy of `src` at `dst` that a run may change: hard links (instant, no space) where the
 * file system allows, else a full copy. Every change (applyChange) replaces a file by a new one
 * rather than writing into it, so the cached tree behind the links is never altered.
 */
export function workingCopy(src, dst) {
  rmSync(dst, { recursive: true, force: true });
  mkdirSync(dirname(dst), { recursive: true });
  let r = spawnSync('cp', ['-al', src, dst], { encoding: 'utf8' });
  if (r.status === 0) return 'hard links';
  rmSync(dst, { recursive: true, force: true });
  r = spawnSync('cp', ['-a', src, dst], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`cp -a ${src} ${dst} failed: ${r.stderr}`);
  return 'copy';
}

/** Regular files of a tree (relative paths, sorted) with their sizes. */
export function listFiles(root) {
  const out = [];
  const walk = (rel) => {
    for (const name of readdirSync(rel === '' ? root : join(root, rel)).sort()) {
      const p = rel === '' ? name : `${rel}/${name}`;
      const st = lstatSync(join(root, p));
      if (st.isDirectory()) walk(p);
      else if (st.isFile()) out.push({ p, size: st.size });
    }
  };
  walk('');
  return out;
}

/**
 * Every `every`-th file of the tree at `root` (a working copy: each is replaced by a new file, so a
 * hard-linked original stays as it was) rewritten with as many new random bytes; returns the paths.
 */
export function replaceEveryNth(root, every) {
  const changed = [];
  for (const [k, f] of listFiles(root).entries()) {
    if (k % every !== 0) continue;
    const abs = join(root, f.p);
    rmSync(abs);
    writeFileSync(abs, randomBytes(f.size), { flag: 'wx' });
    changed.push(f.p);
  }
  return changed;
}

/**
 * The change a run makes to the working copy at `root` (the cached tree `orig` unchanged), about
 * `fraction` of the tree's bytes, half of it each way:
 * - new files: small and medium ones (4-256 KB, random bytes), some in existing directories, some in
 *   a new one, together ~fraction/2 of the tree's bytes;
 * - the largest file of the tree edited: a region in its middle overwritten with random bytes and
 *   as many bytes appended, together ~fraction/2 (at least 64 KiB each way).
 * The file is written as a new file and renamed over the old one (never written through a hard link
 * into the cache). Returns what was done, with the changed bytes counted from the data: the sizes of
 * the new files, the bytes of the middle region that actually differ from before, and the appended
 * bytes. `revertChange` puts the working copy back.
 */
export function applyChange(root, orig, fraction) {
  const files = listFiles(root);
  const total = files.reduce((n, f) => n + f.size, 0);
  const rnd = prng(4242);
  const dirs = [...new Set(files.map((f) => dirname(f.p)).filter((d) => d.startsWith('media/')))].sort();
  if (dirs.length === 0) throw new Error(`${root}: no media/ directories to add files to (not the bench files tree?)`);

  // New files.
  const newBytesTarget = Math.round((total * fraction) / 2);
  const added = [];
  const newDir = 'media/2099/01';
  let newBytes = 0;
  for (let i = 0; newBytes < newBytesTarget; i++) {
    const size = Math.min(newBytesTarget - newBytes, Math.max(1, Math.round(Math.exp(Math.log(4096) + rnd() * (Math.log(256 * 1024) - Math.log(4096))))));
    const dir = i % 3 === 2 ? newDir : dirs[Math.floor(rnd() * dirs.length)];
    const p = `${dir}/bench-new-${String(i).padStart(4, '0')}.jpg`;
    mkdirSync(join(root, dir), { recursive: true });
    writeFileSync(join(root, p), randomBytes(size), { flag: 'wx' });
    added.push({ p, size });
    newBytes += size;
  }

  // The edited large file.
  const largest = [...files].sort((a, b) => b.size - a.size || (a.p < b.p ? -1 : 1))[0];
  const editBytes = Math.max(128 * 1024, Math.round((total * fraction) / 2));
  const regionLen = Math.min(Math.floor(editBytes / 2), Math.floor(largest.size / 4));
  const appendLen = editBytes - regionLen;
  const regionAt = Math.floor(largest.size / 2 - regionLen / 2);
  const target = join(root, largest.p);
  const tmp = `${target}.bench-edit`;
  copyFileSync(join(orig, largest.p), tmp);
  const region = randomBytes(regionLen);
  const before = Buffer.alloc(regionLen);
  const fd = openSync(tmp, 'r+');
  try {
    readSync(fd, before, 0, regionLen, regionAt);
    writeSync(fd, region, 0, regionLen, regionAt);
    const tail = randomBytes(appendLen);
    writeSync(fd, tail, 0, appendLen, largest.size);
  } finally {
    closeSync(fd);
  }
  let differing = 0;
  for (let i = 0; i < regionLen; i++) if (region[i] !== before[i]) differing++;
  renameSync(tmp, target);
  const edited = { p: largest.p, sizeBefore: largest.size, sizeAfter: largest.size + appendLen, regionAt, regionLen, differing, appendLen };
  return {
    treeBytes: total,
    added,
    newDir,
    newBytes,
    edited,
    changedBytes: newBytes + differing + appendLen,
  };
}

/** Puts the working copy back as it was before applyChange (the edited file linked or copied from the cache again). */
export function revertChange(root, orig, change, mode) {
  for (const f of change.added) rmSync(join(root, f.p), { force: true });
  rmSync(join(root, dirname(change.newDir)), { recursive: true, force: true });
  const target = join(root, change.edited.p);
  unlinkSync(target);
  if (mode === 'hard links') linkSync(join(orig, change.edited.p), target);
  else spawnSync('cp', ['-a', join(orig, change.edited.p), target]);
}

/** SHA-256 of a file, hex. */
export function fileSha256(p) {
  const h = createHash('sha256');
  const fd = openSync(p, 'r');
  const buf = Buffer.allocUnsafe(4 * MIB);
  try {
    for (let n; (n = readSync(fd, buf, 0, buf.length, null)) > 0; ) h.update(buf.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}

/**
 * What differs between two trees: the entries (type, size of regular files, target of symlinks),
 * and the content of the regular files at `contentPaths`. Returns a list of differences (empty when
 * the trees agree), at most `max`.
 */
export function treeDifferences(a, b, contentPaths = [], max = 10) {
  const entries = (root) => {
    const m = new Map();
    const walk = (rel) => {
      for (const name of readdirSync(rel === '' ? root : join(root, rel))) {
        const p = rel === '' ? name : `${rel}/${name}`;
        const st = lstatSync(join(root, p));
        if (st.isDirectory()) {
          m.set(p, 'd');
          walk(p);
        } else if (st.isFile()) m.set(p, `f ${st.size}`);
        else if (st.isSymbolicLink()) m.set(p, `l ${readlinkSync(join(root, p))}`);
        else m.set(p, 'other');
      }
    };
    walk('');
    return m;
  };
  const ea = entries(a);
  const eb = entries(b);
  const out = [];
  for (const [p, v] of ea) if (eb.get(p) !== v) out.push(`${p}: ${v} vs ${eb.get(p) ?? 'missing'}`);
  for (const p of eb.keys()) if (!ea.has(p)) out.push(`${p}: missing vs ${eb.get(p)}`);
  for (const p of contentPaths) {
    if (out.length >= max) break;
    if (ea.get(p)?.startsWith('f') && fileSha256(join(a, p)) !== fileSha256(join(b, p))) out.push(`${p}: content differs`);
  }
  return out.slice(0, max);
}

/** Regular files under `dir` (recursively): their number and apparent bytes; zero when it does not exist. */
export function dirUsage(dir) {
  let files = 0;
  let bytes = 0;
  if (!existsSync(dir)) return { files, bytes };
  const walk = (d) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) {
        files++;
        bytes += lstatSync(p).size;
      }
    }
  };
  walk(dir);
  return { files, bytes };
}

/** Every regular file under `dir` (absolute paths), for counting what a run created. */
export function fileSet(dir) {
  const s = new Set();
  if (!existsSync(dir)) return s;
  const walk = (d) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) s.add(p);
    }
  };
  walk(dir);
  return s;
}

/**
 * Makes sure `dir` holds `count` small files of random bytes (1-8 KB, uniform) in ~1000 directories
 * (two levels: 40 x 25), names and sizes from a seeded PRNG; generated when missing or different.
 * The marker is `${dir}.json`, beside the tree.
 */
export function ensureSmallFilesTree(dir, count) {
  const markerFile = `${dir}.json`;
  const want = { version: SMALL_TREE_VERSION, count };
  if (existsSync(markerFile) && existsSync(dir)) {
    try {
      const have = JSON.parse(readFileSync(markerFile, 'utf8'));
      if (have.version === want.version && have.count === want.count) {
        log(`small-files tree ${dir} already generated (${count} files): not regenerating`);
        return have;
      }
    } catch {
      /* regenerate */
    }
  }
  const t0 = performance.now();
  log(`generating small-files tree ${dir} (${count} files of 1-8 KB in ~1000 dirs)`);
  rmSync(markerFile, { force: true });
  rmSync(dir, { recursive: true, force: true });
  const rnd = prng(20261123);
  const buf = Buffer.allocUnsafe(8192);
  const made = new Set();
  let bytes = 0;
  for (let i = 0; i < count; i++) {
    const d = `${String(Math.floor(rnd() * 40)).padStart(2, '0')}/${String(Math.floor(rnd() * 25)).padStart(2, '0')}`;
    if (!made.has(d)) {
      mkdirSync(join(dir, d), { recursive: true });
      made.add(d);
    }
    const size = 1024 + Math.floor(rnd() * 7169);
    randomFillSync(buf, 0, size);
    const fd = openSync(join(dir, d, `${((i * 2654435761) >>> 0).toString(36)}-${i}.jpg`), 'wx');
    writeSync(fd, buf, 0, size);
    closeSync(fd);
    bytes += size;
    if ((i + 1) % 20000 === 0) log(`  ${i + 1}/${count} files`);
  }
  const info = { ...want, dirs: made.size, bytes, seconds: Number(((performance.now() - t0) / 1000).toFixed(1)) };
  writeFileSync(markerFile, JSON.stringify(info, null, 2));
  log(`  ${count} files, ${bytes} bytes in ${made.size} dirs, ${info.seconds} s`);
  return info;
}
