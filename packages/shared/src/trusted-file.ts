import { closeSync, fstatSync, openSync, readFileSync, realpathSync, statSync, type Stats } from 'node:fs';
import { dirname } from 'node:path';
import { TandemError } from './errors.js';

/**
 * Reading a file whose content decides what an agent trusts: the keys (public ones too: whoever
 * replaces backup.agepub gets every later backup encrypted to their key; whoever replaces
 * signing.pub decides which sets a standby accepts) and the daemons' tokens. Such a file is refused,
 * not warned about, when anyone but this agent's user (or root) could have chosen its content:
 *   - it is writable by group or others, or owned by another user;
 *   - its directory (as named, and after symlinks) is writable by group or others without the
 *     sticky bit, or owned by another user: whoever can write the directory can replace the file.
 * A secret (private key, token) readable by group or others is told (warn level) but still used:
 * `root:tandem 0640` is a common, deliberate set-up.
 * The checks and the read use one open file descriptor, so the file checked is the file read.
 */
export interface TrustedFileOptions {
  /** What the file is, for messages ("age recipient file"). */
  what: string;
  /** The config key that names it, for messages ("keys.recipientFile"). */
  key?: string;
  /** Error code when it cannot be read at all (KEY_UNREADABLE, TOKEN_UNREADABLE). */
  unreadableCode: string;
  /** Hint when it cannot be read at all. */
  hint: string;
  /** Private key or token: warn when group or others can read it. */
  secret: boolean;
  logger?: { warn(obj: object, msg: string): void };
}

const octal = (mode: number): string => (mode & 0o7777).toString(8).padStart(4, '0');

/** The uid this process runs as; undefined where there are no uids (then nothing is checked). */
const myUid = (): number | undefined => process.geteuid?.();

function unsafe(file: string, o: TrustedFileOptions, why: string, hint: string): TandemError {
  const named = o.key ? ` (${o.key})` : '';
  return new TandemError('config', 'FILE_UNSAFE', `${o.what} ${file}${named}: ${why}; refusing to use it, since whoever can change it decides what this agent trusts`, { hint });
}

function checkOwner(st: Stats, uid: number, describe: () => string): string | null {
  if (st.uid === uid || st.uid === 0) return null;
  return `${describe()} is owned by uid ${st.uid}, not by this agent's user (uid ${uid}) or root`;
}

function checkDir(dir: string, file: string, uid: number, o: TrustedFileOptions): void {
  let st: Stats;
  try {
    st = statSync(dir);
  } catch {
    return; // the file was opened through it; a directory that cannot be stat()ed is not worth failing for
  }
  const owner = checkOwner(st, uid, () => `its directory ${dir}`);
  if (owner !== null) throw unsafe(file, o, owner, `chown ${uid} ${dir} && chmod 700 ${dir}, or keep the file in a directory only this agent's user (or root) can write`);
  if ((st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0) {
    throw unsafe(file, o, `its directory ${dir} can be written by group or others (mode ${octal(st.mode)}): anyone who can write it can replace the file`, `chmod 700 ${dir} (or at least chmod go-w ${dir})`);
  }
}

export function readTrustedFile(file: string, o: TrustedFileOptions): string {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'is a directory' : String(err);
    throw new TandemError('config', o.unreadableCode, `${o.what} ${file}${o.key ? ` (${o.key})` : ''}: ${why}`, { hint: o.hint });
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new TandemError('config', o.unreadableCode, `${o.what} ${file}: not a regular file`, { hint: o.hint });
    const uid = myUid();
    if (uid !== undefined) {
      const owner = checkOwner(st, uid, () => 'it');
      if (owner !== null) throw unsafe(file, o, owner, `replace it with a copy owned by this agent's user: cp ${file} ${file}.new && chmod 600 ${file}.new && mv ${file}.new ${file} (after checking its content)`);
      if ((st.mode & 0o022) !== 0) throw unsafe(file, o, `it can be written by group or others (mode ${octal(st.mode)})`, `chmod 600 ${file} (after checking its content)`);
      checkDir(dirname(file), file, uid, o);
      let real = file;
      try {
        real = realpathSync(file);
      } catch {
        /* opened already; keep the named path */
      }
      if (dirname(real) !== dirname(file)) checkDir(dirname(real), file, uid, o);
    }
    if (o.secret && (st.mode & 0o077) !== 0) {
      o.logger?.warn({ file, mode: octal(st.mode) }, `${o.what} is readable by group or others; chmod 600 it`);
    }
    return readFileSync(fd, 'utf8');
  } finally {
    closeSync(fd);
  }
}
