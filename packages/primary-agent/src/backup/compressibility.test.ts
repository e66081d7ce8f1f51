import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { probeCompressibility } from './compressibility.js';

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'tandem-compressibility-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

async function tree(name: string, files: Record<string, Buffer | string>): Promise<string> {
  const dir = join(root, name);
  for (const [rel, data] of Object.entries(files)) {
    await mkdir(join(dir, rel, '..'), { recursive: true });
    await writeFile(join(dir, rel), data);
  }
  await mkdir(dir, { recursive: true });
  return dir;
}

const text = (n: number) => Array.from({ length: n }, (_, i) => `<p class="item">Article ${i}: lorem ipsum dolor sit amet</p>\n`).join('');

describe('probeCompressibility', () => {
  it('media (random bytes) is stored, text is compressed', async () => {
    const media = await tree('media', { 'a/1.jpg': randomBytes(200_000), 'a/2.jpg': randomBytes(50_000), 'b/clip.mp4': randomBytes(1_000_000), 'note.txt': 'hi\n' });
    const v = await probeCompressibility(media);
    expect(v.compress).toBe(false);
    expect(v.files).toBe(4);
    expect(v.sampled).toBe(64 * 1024 * 2 + 50_000 + 3);
    expect(v.deflated).toBeGreaterThan(v.sampled * 0.9);

    const site = await tree('text', { 'index.html': text(2000), 'css/site.css': text(500), 'logo.png': randomBytes(4_000) });
    const t = await probeCompressibility(site);
    expect(t.compress).toBe(true);
    expect(t.deflated).toBeLessThan(t.sampled * 0.5);
  });

  it('an empty tree is compressed (nothing to lose), symlinks and FIFOs are neither followed nor opened', async () => {
    const empty = await tree('empty', {});
    expect(await probeCompressibility(empty)).toEqual({ compress: true, sampled: 0, deflated: 0, files: 0 });

    const other = await tree('elsewhere', { 'big.txt': text(5000) });
    const links = await tree('links', { 'media.bin': randomBytes(100_000) });
    await symlink(join(other, 'big.txt'), join(links, 'a-link.txt'));
    await symlink(other, join(links, 'a-dir-link'));
    execFileSync('mkfifo', [join(links, 'pipe')]);
    const v = await probeCompressibility(links);
    // Only media.bin was read: the linked text would have made the sample compressible.
    expect(v).toMatchObject({ compress: false, files: 1, sampled: 64 * 1024 });
  });

  it('stops after its sample: a large tree costs at most 8 MiB of reads', async () => {
    const files: Record<string, Buffer> = {};
    for (let i = 0; i < 300; i++) files[`d${i % 7}/f${i}.bin`] = randomBytes(40_000);
    const big = await tree('big', files);
    const v = await probeCompressibility(big);
    expect(v.files).toBe(210); // 8 MiB / 40,000 bytes, rounded up
    expect(v.sampled).toBe(8 << 20);
  });
});
