import { describe, expect, it } from 'vitest';
import { Limiter } from './limiter.js';

describe('Limiter', () => {
  it('runs at most max at once, in arrival order, and passes a failed slot on', async () => {
    const l = new Limiter(2);
    let now = 0;
    let peak = 0;
    const order: number[] = [];
    const waits: number[] = [];
    const task = (i: number, fail = false) =>
      l.run(async () => {
        now++;
        peak = Math.max(peak, now);
        order.push(i);
        await new Promise((r) => setTimeout(r, 20));
        now--;
        if (fail) throw new Error(`task ${i}`);
        return i;
      }, (ahead) => waits.push(ahead));
    const results = await Promise.allSettled([task(1), task(2, true), task(3), task(4), task(5)]);
    expect(peak).toBe(2);
    expect(order).toEqual([1, 2, 3, 4, 5]);
    expect(waits).toEqual([1, 2, 3]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled', 'fulfilled', 'fulfilled']);
    expect(l.active).toBe(0);
    expect(l.waiting).toBe(0);
  });

  it('refuses a limit below 1', () => {
    expect(() => new Limiter(0)).toThrow(/at least 1/);
  });
});

describe('mergeExpositions', () => {
  it('puts each metric once, with the samples of every site under it', async () => {
    const { mergeExpositions } = await import('./metrics.js');
    const a = '# HELP tandem_x help x\n# TYPE tandem_x gauge\ntandem_x{site="a"} 1\n# HELP tandem_y help y\n# TYPE tandem_y counter\ntandem_y{site="a",kind="k"} 0\n';
    const b = '# HELP tandem_x help x\n# TYPE tandem_x gauge\ntandem_x{site="b"} 2\n# HELP tandem_y help y\n# TYPE tandem_y counter\ntandem_y{site="b",kind="k"} 3\n';
    expect(mergeExpositions([a, b])).toBe(
      '# HELP tandem_x help x\n# TYPE tandem_x gauge\ntandem_x{site="a"} 1\ntandem_x{site="b"} 2\n# HELP tandem_y help y\n# TYPE tandem_y counter\ntandem_y{site="a",kind="k"} 0\ntandem_y{site="b",kind="k"} 3\n',
    );
  });
});
