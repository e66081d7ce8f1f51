import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { TandemError, createAgeDecryptStream, fsyncDir, loadIdentities, requireString, type Command } from '@tandem/shared';

export const decryptCommand: Command = {
  name: 'decrypt',
  summary: 'decrypt one artifact with an age identity file',
  help: `Usage: tandem-standby decrypt --identity FILE IN [-o OUT]

Decrypts one age-encrypted artifact (e.g. db.dump.zst.age) with the identity file (the site's
backup.agekey). The output of a .zst.age artifact is still zstd-compressed: \`zstd -d\` it, or
pipe it on. A files archive stored uncompressed (files.tar.age, "compression": "none" in its
manifest entry) decrypts to a plain tar. The standard \`age -d -i FILE\` does the same.

With -o, the plaintext goes to OUT.tmp-* first and is renamed to OUT only when the whole file
decrypted and authenticated: a wrong key or a damaged file leaves no OUT behind. Without -o it
goes to stdout; age authenticates chunk by chunk, so on a damaged file stdout may have received
the authentic part before the error (exit status non-zero). IN may be "-" for stdin. Binary data
is never written to a terminal: without -o, stdout must be a file or a pipe.

Options:
  --identity FILE  age identity file (AGE-SECRET-KEY-1...) (required)
  -o, --output OUT write the plaintext here instead of stdout

Exit status: 0 decrypted; 5 wrong key, damaged or truncated file; 2 bad usage (stdout is a
terminal and no -o) or key file.`,
  options: { identity: { type: 'string', short: 'i' }, output: { type: 'string', short: 'o' } },
  positionals: { min: 1, max: 1 },
  async run({ values, positionals, logger }) {
    if (typeof values.output !== 'string' && process.stdout.isTTY === true) {
      throw new TandemError('config', 'OUTPUT_IS_TERMINAL', 'tandem-standby decrypt: not writing the decrypted artifact to a terminal (it is binary: a zstd stream or a tar archive)', {
        hint: 'give -o FILE, or redirect stdout: `tandem-standby decrypt -i KEY IN > FILE` or `... | zstd -d > FILE`',
      });
    }
    const identities = loadIdentities(requireString(values, 'identity', 'tandem-standby decrypt'), logger);
    const input = positionals[0]!;
    const label = input === '-' ? 'stdin' : input;
    const source = input === '-' ? process.stdin : await openInput(input);
    const decrypt = createAgeDecryptStream(identities, { label });
    if (typeof values.output !== 'string') {
      await pipeline(source, decrypt, process.stdout as Writable, { end: false });
      return;
    }
    const out = resolve(values.output);
    try {
      await writeAtomically(out, source, decrypt);
    } catch (err) {
      if (err instanceof TandemError || typeof (err as NodeJS.ErrnoException).code !== 'string') throw err;
      throw new TandemError('permanent', 'OUTPUT_UNWRITABLE', `cannot write ${out}: ${(err as Error).message}`, { cause: err });
    }
  },
};

async function openInput(file: string): Promise<Readable> {
  try {
    return (await open(file, 'r')).createReadStream();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new TandemError('config', 'INPUT_UNREADABLE', `${file}: ${code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
  }
}

async function writeAtomically(out: string, source: Readable, decrypt: NodeJS.ReadWriteStream): Promise<void> {
  const tmp = `${out}.tmp-${randomBytes(6).toString('hex')}`;
  try {
    await pipeline(source, decrypt, createWriteStream(tmp, { flags: 'wx', mode: 0o600 }));
    const fh = await open(tmp, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, out);
    await fsyncDir(dirname(out));
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}
