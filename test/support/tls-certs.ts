/**
 * Certificates for the TLS tests, made with the real `openssl` as the operations guide shows: a CA,
 * server certificates for 127.0.0.1/localhost and client certificates it issues, each with the
 * serial number the test chooses (so that a rotation is visible to a client). Keys are EC P-256
 * (fast), written 0600.
 */
import { chmod, copyFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { mustRun } from './site.js';

export interface CertFiles {
  cert: string;
  key: string;
}

export interface TestCa extends CertFiles {
  dir: string;
  /** A certificate this CA issues: server (serverAuth, clientAuth) or client (clientAuth). */
  issue(name: string, o: { serial: number; kind: 'server' | 'client'; cn?: string }): Promise<CertFiles>;
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

export async function makeCa(dir: string, name: string): Promise<TestCa> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  const key = join(dir, `${name}.key`);
  const cert = join(dir, `${name}.crt`);
  await mustRun('openssl', ['req', '-x509', ...EC, '-keyout', key, '-out', cert, '-days', '3', '-subj', `/CN=${name}`]);
  await chmod(key, 0o600);
  return {
    dir,
    key,
    cert,
    async issue(leaf, o) {
      const leafKey = join(dir, `${leaf}.key`);
      const csr = join(dir, `${leaf}.csr`);
      const ext = join(dir, `${leaf}.ext`);
      const leafCert = join(dir, `${leaf}.crt`);
      await mustRun('openssl', ['req', '-new', ...EC, '-keyout', leafKey, '-out', csr, '-subj', `/CN=${o.cn ?? (o.kind === 'server' ? 'localhost' : leaf)}`]);
      await writeFile(
        ext,
        o.kind === 'server'
          ? 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature\n'
          : 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n',
      );
      await mustRun('openssl', ['x509', '-req', '-in', csr, '-CA', cert, '-CAkey', key, '-set_serial', String(o.serial), '-days', '2', '-out', leafCert, '-extfile', ext]);
      await chmod(leafKey, 0o600);
      await rm(csr);
      await rm(ext);
      return { cert: leafCert, key: leafKey };
    },
  };
}

/** Puts `from` where `to` is (certificate and key), as an operator's renewal would: the files replaced in place. */
export async function installCert(from: CertFiles, to: CertFiles): Promise<void> {
  await copyFile(from.cert, to.cert);
  await writeFile(to.key, await readFile(from.key), { mode: 0o600 });
  await chmod(to.key, 0o600);
}

/** A serial number as node:tls reports it (getPeerCertificate().serialNumber: upper-case hex). */
export const serialHex = (n: number): string => {
  const h = n.toString(16).toUpperCase();
  return h.length % 2 === 0 ? h : `0${h}`;
};
