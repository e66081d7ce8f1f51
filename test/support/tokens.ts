/**
 * The daemons' tokens for the scenario tests, as `tandem-primary init` lays them out: a control
 * token and a monitoring token for the primary, and one token per listed standby, each in its own
 * 0600 file. `primaryServer` and `primaryStandbys` are the primary's config fragments.
 */
import { createHash } from 'node:crypto';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export interface TokenSet {
  dir: string;
  control: { token: string; file: string };
  read: { token: string; file: string };
  /** By standby id. */
  standbys: Record<string, { token: string; file: string }>;
  /** server: {listen, tokenFile, readTokenFile} */
  primaryServer(listen: string): { listen: string; tokenFile: string; readTokenFile: string };
  /** standbys: [{id, tokenFile}] */
  primaryStandbys(): Array<{ id: string; tokenFile: string }>;
}

async function put(file: string, token: string): Promise<{ token: string; file: string }> {
  await writeFile(file, `${token}\n`, { mode: 0o600 });
  await chmod(file, 0o600);
  return { token, file };
}

/** Deterministic tokens (so that a test can look for them in logs): `${prefix}-<role>-<32 hex>`. */
export async function writeTokens(dir: string, prefix: string, standbyIds: string[]): Promise<TokenSet> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  const tok = (role: string) => `${prefix}-${role}-${createHash('sha256').update(`${prefix}/${role}`).digest('hex').slice(0, 32)}`;
  const control = await put(join(dir, 'control.token'), tok('control'));
  const read = await put(join(dir, 'read.token'), tok('read'));
  const standbys: TokenSet['standbys'] = {};
  for (const id of standbyIds) standbys[id] = await put(join(dir, `standby-${id}.token`), tok(`sb-${id}`));
  return {
    dir,
    control,
    read,
    standbys,
    primaryServer: (listen) => ({ listen, tokenFile: control.file, readTokenFile: read.file }),
    primaryStandbys: () => standbyIds.map((id) => ({ id, tokenFile: standbys[id]!.file })),
  };
}
