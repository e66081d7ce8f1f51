import { createRequire } from 'node:module';
import type { Registry } from 'prom-client';

/**
 * prom-client, loaded by the first registry made: the barrel of this package is imported by every
 * command, and only the daemons serve metrics (a wal-push PostgreSQL runs per file must not load it).
 */
let promClient: typeof import('prom-client') | undefined;
const prom = (): typeof import('prom-client') => (promClient ??= createRequire(import.meta.url)('prom-client') as typeof import('prom-client'));

/**
 * A daemon's Prometheus metrics on a registry of its own (served at GET /metrics), with the
 * process metrics (memory, CPU, event loop lag) that prom-client collects by default.
 * Subclasses create their metrics with `registers: this.registers`.
 *
 * An agent serving several sites has one registry per site, each with `site` as a label on every
 * sample and without the process metrics, and one more with only those (processMetrics()); the
 * scrape is their texts merged (mergeExpositions), one HELP and TYPE per metric.
 */
export abstract class MetricsRegistry {
  readonly registry: Registry = new (prom().Registry)();
  protected readonly registers = [this.registry];

  constructor(opts: { site?: string } = {}) {
    if (opts.site === undefined) prom().collectDefaultMetrics({ register: this.registry });
    else this.registry.setDefaultLabels({ site: opts.site });
  }

  /** The exposition text for a scrape. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

/** A registry with the process metrics alone (for an agent serving several sites). */
export function processMetrics(): Registry {
  const r = new (prom().Registry)();
  prom().collectDefaultMetrics({ register: r });
  return r;
}

/**
 * Several expositions as one: the samples of a metric that appears in more than one (each site's
 * registry has the same metrics, told apart by their site label) under one HELP and TYPE, in the
 * order the metrics first appear.
 */
export function mergeExpositions(texts: string[]): string {
  const families = new Map<string, { head: string[]; samples: string[] }>();
  for (const text of texts) {
    let current: { head: string[]; samples: string[] } | null = null;
    for (const line of text.split('\n')) {
      if (line === '') continue;
      const m = /^# (HELP|TYPE) (\S+)/.exec(line);
      if (m) {
        const name = m[2]!;
        let f = families.get(name);
        if (f === undefined) {
          f = { head: [], samples: [] };
          families.set(name, f);
        }
        if (!f.head.some((h) => h.startsWith(`# ${m[1]} `))) f.head.push(line);
        current = f;
        continue;
      }
      if (line.startsWith('#')) continue;
      if (current === null) {
        const name = /^[A-Za-z_:][A-Za-z0-9_:]*/.exec(line)?.[0] ?? line;
        current = families.get(name) ?? { head: [], samples: [] };
        families.set(name, current);
      }
      current.samples.push(line);
    }
  }
  const out: string[] = [];
  for (const f of families.values()) out.push(...f.head, ...f.samples);
  return `${out.join('\n')}\n`;
}
