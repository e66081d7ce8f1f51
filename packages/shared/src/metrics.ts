import { Registry, collectDefaultMetrics } from 'prom-client';

/**
 * A daemon's Prometheus metrics on a registry of its own (served at GET /metrics), with the
 * process metrics (memory, CPU, event loop lag) that prom-client collects by default.
 * Subclasses create their metrics with `registers: this.registers`.
 */
export abstract class MetricsRegistry {
  readonly registry = new Registry();
  protected readonly registers = [this.registry];

  constructor() {
    collectDefaultMetrics({ register: this.registry });
  }

  /** The exposition text for a scrape. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
