import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { TandemError } from '../errors.js';
import { redactUrl } from './url.js';

/**
 * Where a filestore is: the typed form of its URL (config key filestore.url), parsed once when the
 * config is loaded, so that a bad URL is reported with the rest of the config.
 */
export type FilestoreLocation =
  | { scheme: 'file'; root: string }
  | {
      scheme: 's3';
      bucket: string;
      /** '' or '/'-terminated. */
      prefix: string;
      endpoint?: string;
      region?: string;
      forcePathStyle: boolean;
      checksums: 'when-supported' | 'when-required';
      conditionalWrites: 'native' | 'emulated';
      /** Request tuning from the URL (see S3_TUNING); absent when not given. */
      maxAttempts?: number;
      connectTimeoutMs?: number;
      idleTimeoutMs?: number;
    };

const S3_OPTIONS: Record<string, readonly string[] | null> = {
  endpoint: null, // any http(s) URL
  region: null,
  forcePathStyle: ['true', 'false'],
  checksums: ['when-supported', 'when-required'],
  conditionalWrites: ['native', 'emulated'],
  maxAttempts: null,
  connectTimeoutMs: null,
  idleTimeoutMs: null,
};

/**
 * Request tuning in the URL, for an agent whose config has only the URL: attempts per request
 * including the first (default 4; the SDK retries timeouts, 5xx, throttling and resets with
 * exponential backoff), the TCP connect timeout (default 10 s), and how long a socket may stay
 * idle mid-request before the request fails and is retried (default 60 s): what ends a stalled
 * transfer.
 */
const S3_TUNING = {
  maxAttempts: { min: 1, max: 20 },
  connectTimeoutMs: { min: 100, max: 600_000 },
  idleTimeoutMs: { min: 100, max: 3_600_000 },
} as const;

const EXAMPLES = 'file:///var/backups/tandem or s3://bucket/prefix';

/** Parses a filestore URL; every problem is a TandemError of kind 'config' that names the culprit. */
export function parseFilestoreUrl(url: string): FilestoreLocation {
  const shown = JSON.stringify(redactUrl(url));
  const fail = (why: string, hint?: string): never => {
    throw new TandemError('config', 'FILESTORE_URL', `filestore URL ${shown}: ${why}`, { hint });
  };
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(url)?.[1]?.toLowerCase();
  if (scheme === undefined) {
    return fail(
      'not a URL',
      url.startsWith('/') ? `write it as ${pathToFileURL(url).href}` : `use ${EXAMPLES} (file paths must be absolute)`,
    );
  }
  if (scheme === 'file') return parseFileUrl(url, fail);
  if (scheme === 's3') return parseS3Url(url, fail);
  return fail(`unsupported scheme "${scheme}:"`, `use ${EXAMPLES}`);
}

function parseFileUrl(url: string, fail: (why: string, hint?: string) => never): FilestoreLocation {
  if (!/^file:\/\//i.test(url)) return fail('relative file paths are not supported', 'use file:///absolute/path');
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return fail('malformed URL', 'use file:///absolute/path');
  }
  if (u.hostname !== '' && u.hostname !== 'localhost') {
    return fail(`names host "${u.hostname}"; a relative path is not allowed`, `use file:///absolute/path (three slashes)`);
  }
  if (u.search !== '') return fail(`file URLs take no options (got "${u.search}")`);
  if (u.hash !== '') return fail('file URLs take no fragment ("#"); percent-encode it as %23');
  let root: string;
  try {
    root = fileURLToPath(u);
  } catch (err) {
    return fail(`not a usable path: ${(err as Error).message}`);
  }
  if (root.includes('\0')) return fail('the path contains a NUL byte');
  if (!path.isAbsolute(root)) return fail('the path must be absolute');
  return { scheme: 'file', root: path.resolve(root) };
}

function parseS3Url(url: string, fail: (why: string, hint?: string) => never): FilestoreLocation {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return fail('malformed URL', 'use s3://bucket/prefix?region=...');
  }
  if (u.username !== '' || u.password !== '') {
    return fail('credentials do not belong in the URL', 'use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, an AWS profile or an instance role');
  }
  if (u.port !== '') return fail('a port belongs in the endpoint option', 'use s3://bucket/prefix?endpoint=http://host:port');
  const bucket = u.hostname;
  if (bucket === '') return fail('missing bucket', 'use s3://bucket/prefix');
  if (!/^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$/.test(bucket)) {
    return fail(`invalid bucket name "${bucket}" (3-63 characters: lower-case letters, digits, ".", "-", "_")`);
  }
  if (u.hash !== '') return fail('S3 URLs take no fragment ("#")');
  // Read the prefix from the raw text: URL parsing would quietly resolve "a/../b" to "b".
  const rawPath = url.replace(/^s3:\/\/[^/?#]*\/?/i, '').split(/[?#]/)[0] ?? '';
  let prefix: string;
  try {
    prefix = decodeURIComponent(rawPath);
  } catch {
    return fail('malformed percent-encoding in the prefix');
  }
  if (prefix !== '') {
    prefix = prefix.replace(/\/$/, '');
    for (const s of prefix.split('/')) {
      if (s === '' || s === '.' || s === '..' || s.includes('\\')) return fail(`invalid prefix segment "${s}"`);
    }
    prefix += '/';
  }

  const seen = new Map<string, string>();
  for (const [name, value] of u.searchParams) {
    const allowed = Object.hasOwn(S3_OPTIONS, name) ? S3_OPTIONS[name] : undefined;
    if (allowed === undefined) {
      return fail(`unknown option "${name}"`, `allowed options: ${Object.keys(S3_OPTIONS).join(', ')}`);
    }
    if (seen.has(name)) return fail(`option "${name}" given twice`);
    if (allowed !== null && !allowed.includes(value)) {
      return fail(`option ${name}=${JSON.stringify(value)} is not valid`, `allowed values for ${name}: ${allowed.join(', ')}`);
    }
    seen.set(name, value);
  }
  const endpoint = seen.get('endpoint');
  if (endpoint !== undefined) {
    let e: URL | undefined;
    try {
      e = new URL(endpoint);
    } catch {
      e = undefined;
    }
    if (e === undefined || (e.protocol !== 'http:' && e.protocol !== 'https:')) {
      return fail(`option endpoint=${JSON.stringify(redactUrl(endpoint))} is not an http(s) URL`, 'e.g. endpoint=http://127.0.0.1:9000');
    }
    if (e.username !== '' || e.password !== '') return fail('credentials do not belong in the endpoint URL');
  }
  const tuning: { maxAttempts?: number; connectTimeoutMs?: number; idleTimeoutMs?: number } = {};
  for (const [name, { min, max }] of Object.entries(S3_TUNING) as [keyof typeof S3_TUNING, { min: number; max: number }][]) {
    const raw = seen.get(name);
    if (raw === undefined) continue;
    const n = /^[0-9]+$/.test(raw) ? Number(raw) : NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max) {
      return fail(`option ${name}=${JSON.stringify(raw)} is not valid`, `${name} is a whole number from ${min} to ${max}`);
    }
    tuning[name] = n;
  }
  const region = seen.get('region');
  if (region !== undefined && !/^[a-z0-9-]+$/.test(region)) {
    return fail(`option region=${JSON.stringify(region)} is not a region name`, 'e.g. region=us-east-1');
  }
  return {
    scheme: 's3',
    bucket,
    prefix,
    endpoint,
    region,
    // S3-compatible servers at a custom endpoint rarely have wildcard DNS for bucket hosts.
    forcePathStyle: (seen.get('forcePathStyle') ?? String(endpoint !== undefined)) === 'true',
    checksums: (seen.get('checksums') ?? 'when-supported') as 'when-supported' | 'when-required',
    conditionalWrites: (seen.get('conditionalWrites') ?? 'native') as 'native' | 'emulated',
    ...tuning,
  };
}

/** The location as a URL, for messages and logs; it never contains credentials. */
export function describeFilestoreLocation(loc: FilestoreLocation): string {
  if (loc.scheme === 'file') return pathToFileURL(loc.root).href;
  // Left unencoded for readability; "endpoint=http://host:9000" parses back all the same.
  const q: string[] = [];
  if (loc.endpoint !== undefined) q.push(`endpoint=${loc.endpoint}`);
  if (loc.region !== undefined) q.push(`region=${loc.region}`);
  if (loc.forcePathStyle !== (loc.endpoint !== undefined)) q.push(`forcePathStyle=${loc.forcePathStyle}`);
  if (loc.checksums !== 'when-supported') q.push(`checksums=${loc.checksums}`);
  if (loc.conditionalWrites !== 'native') q.push(`conditionalWrites=${loc.conditionalWrites}`);
  for (const name of Object.keys(S3_TUNING) as (keyof typeof S3_TUNING)[]) if (loc[name] !== undefined) q.push(`${name}=${loc[name]}`);
  return `s3://${loc.bucket}/${loc.prefix}${q.length ? `?${q.join('&')}` : ''}`;
}
