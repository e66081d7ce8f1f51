/**
 * Helpers shared by the packages' unit tests. Never part of the build (tsconfig.json excludes
 * src/testing, as it excludes the *.test.ts files): nothing outside a test may import this.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { expect } from 'vitest';
import { TandemError, type ErrorKind } from '../errors.js';

/** What a test demands of an error beyond its being a TandemError. */
export interface ExpectedError {
  kind?: ErrorKind;
  code?: string;
}

function expectTandemError(err: unknown, expected: ExpectedError): TandemError {
  expect(err, String(err)).toBeInstanceOf(TandemError);
  const e = err as TandemError;
  if (expected.kind !== undefined) expect(e.kind, e.message).toBe(expected.kind);
  if (expected.code !== undefined) expect(e.code, e.message).toBe(expected.code);
  return e;
}

/** The TandemError `fn` throws (of the expected kind and code); the test fails if it throws nothing or anything else. */
export function thrownBy(fn: () => unknown, expected: ExpectedError = {}): TandemError {
  try {
    fn();
  } catch (err) {
    return expectTandemError(err, expected);
  }
  return expect.fail('expected an error, but nothing was thrown');
}

/** What `p` rejects with, whatever it is; the test fails if `p` resolves. */
export async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  return expect.fail('expected the promise to reject, but it resolved');
}

/** The TandemError `p` rejects with (of the expected kind and code); the test fails otherwise. */
export async function rejectedWith(p: Promise<unknown>, expected: ExpectedError = {}): Promise<TandemError> {
  return expectTandemError(await rejection(p), expected);
}

/** A sink that keeps everything, so a test can see what came through (before a failure, too). */
export function collector(): Writable & { data(): Buffer } {
  const chunks: Buffer[] = [];
  const w = new Writable({
    write(chunk: Buffer, _enc, cb) {
      chunks.push(chunk);
      cb();
    },
  });
  return Object.assign(w, { data: () => Buffer.concat(chunks) });
}

const tempDirs = new Set<string>();

/**
 * A new directory under the OS temp dir, removed by removeTempDirs (a test file calls it from
 * afterAll): tests must not leave their trees behind on a machine that runs them every day.
 */
export function tempDirSync(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  tempDirs.add(dir);
  return dir;
}

export function removeTempDirs(): void {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}
