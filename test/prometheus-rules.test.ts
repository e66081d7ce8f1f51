/**
 * etc/prometheus/tandem-rules.yml and etc/grafana/tandem.json: promtool accepts the rules, and its
 * unit tests (etc/prometheus/tandem-rules.test.yml) make every alert fire; every metric a rule or a
 * dashboard panel reads is one the agents export (the metrics modules' own registries, as /metrics
 * serves them).
 */
import { copyFile, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as fromYaml } from 'yaml';
import { DaemonMetrics } from '../packages/primary-agent/src/daemon/metrics.js';
import type { AppliedState } from '../packages/standby-agent/src/apply/state.js';
import { StandbyMetrics } from '../packages/standby-agent/src/daemon/metrics.js';
import { SITE_RUNNING_METRIC } from '../packages/primary-agent/src/daemon/host.js';
import { STANDBY_SITE_RUNNING_METRIC } from '../packages/standby-agent/src/daemon/host.js';
import { REPO_ROOT, requireCommands, runCommand, tmpDir } from './support/site.js';

const RULES = join(REPO_ROOT, 'etc', 'prometheus', 'tandem-rules.yml');
const RULE_TESTS = join(REPO_ROOT, 'etc', 'prometheus', 'tandem-rules.test.yml');
const DASHBOARD = join(REPO_ROOT, 'etc', 'grafana', 'tandem.json');
/** Series Prometheus makes itself, not the agents. */
const PROMETHEUS_OWN = new Set(['up']);
const PROMQL_WORDS = new Set(['and', 'or', 'unless', 'bool', 'offset', 'Inf', 'NaN', 'inf', 'nan']);

interface RuleFile {
  groups: Array<{ name: string; rules: Array<{ alert?: string; record?: string; expr: string; labels?: Record<string, string> }> }>;
}
interface RuleTests {
  tests: Array<{ alert_rule_test?: Array<{ alertname: string; exp_alerts: unknown[] }> }>;
}
interface Panel {
  type: string;
  title: string;
  targets?: Array<{ expr: string }>;
  panels?: Panel[];
}

/** Metric names a PromQL expression reads (strings, label matchers, ranges, grouping and function names removed). */
function metricNamesIn(expr: string): string[] {
  let e = expr.replace(/"(?:[^"\\]|\\.)*"/g, '""');
  e = e.replace(/\{[^}]*\}/g, ' ').replace(/\[[^\]]*\]/g, ' ');
  e = e.replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ');
  const names: string[] = [];
  for (const m of e.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?/g)) {
    if (m[2] !== undefined || PROMQL_WORDS.has(m[1]!)) continue; // a function, or a keyword
    names.push(m[1]!);
  }
  return names;
}

/** Every series name the two agents' registries expose (histograms with their _bucket, _sum, _count). */
async function exportedNames(): Promise<Set<string>> {
  const applied: AppliedState = {
    site: 'demo',
    setId: '20260101T000000Z-e1-000001',
    epoch: 1,
    seq: 1,
    createdAt: '2026-01-01T00:00:00.000Z',
    committedAt: '2026-01-01T00:00:01.000Z',
    bytes: 1,
    appliedAt: '2026-01-01T00:00:05.000Z',
    durations: { db: 1, total: 2 },
    restart: 'ok',
  };
  const primary = new DaemonMetrics({ standbys: () => [{ standbyId: 'web2', lagSeconds: 0 }], nextRunAt: () => null });
  const standby = new StandbyMetrics({
    lag: () => ({ recoveryPointAgeSeconds: 1, applyLagSeconds: 1, pendingSets: 0, primaryHeartbeatAgeSeconds: 1, heartbeatNewerSetId: null }),
    applied: () => applied,
    websocketConnected: () => true,
  });
  // A daemon of several sites adds one gauge of its own (test/primary-sites-daemon.test.ts and
  // test/standby-sites-daemon.test.ts read it from /metrics).
  const names = new Set<string>([SITE_RUNNING_METRIC, STANDBY_SITE_RUNNING_METRIC]);
  for (const text of [await primary.text(), await standby.text()]) {
    for (const line of text.split('\n')) {
      const type = /^# TYPE (\S+) (\w+)$/.exec(line);
      if (type !== null) {
        names.add(type[1]!);
        if (type[2] === 'histogram' || type[2] === 'summary') for (const suffix of ['_bucket', '_sum', '_count']) names.add(`${type[1]}${suffix}`);
      } else if (line !== '' && !line.startsWith('#')) {
        names.add(/^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line)![0]);
      }
    }
  }
  return names;
}

function panelsOf(panels: Panel[]): Panel[] {
  return panels.flatMap((p) => [p, ...panelsOf(p.panels ?? [])]);
}

describe('Prometheus alert rules and the Grafana dashboard', () => {
  let work: string;
  let exported: Set<string>;

  beforeAll(async () => {
    requireCommands(['promtool']);
    work = await tmpDir('tandem-rules-');
    exported = await exportedNames();
  });

  afterAll(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('promtool check rules accepts the rules', async () => {
    const r = await runCommand('promtool', ['check', 'rules', RULES]);
    expect(r.code, r.stdout.toString() + r.stderr).toBe(0);
    const rules = (fromYaml(await readFile(RULES, 'utf8')) as RuleFile).groups.flatMap((g) => g.rules);
    expect(r.stdout.toString()).toContain(`SUCCESS: ${rules.length} rules found`);
  });

  it("promtool's unit tests make every alert fire, and they fail when a rule stops firing", async () => {
    const r = await runCommand('promtool', ['test', 'rules', RULE_TESTS]);
    expect(r.code, r.stdout.toString() + r.stderr).toBe(0);
    expect(r.stdout.toString()).toContain('SUCCESS');

    const alerts = (fromYaml(await readFile(RULES, 'utf8')) as RuleFile).groups.flatMap((g) => g.rules.map((x) => x.alert)).filter((a): a is string => a !== undefined);
    const fired = new Set(
      (fromYaml(await readFile(RULE_TESTS, 'utf8')) as RuleTests).tests.flatMap((t) => (t.alert_rule_test ?? []).filter((a) => a.exp_alerts.length > 0).map((a) => a.alertname)),
    );
    expect(alerts.length).toBeGreaterThanOrEqual(10);
    expect(alerts.filter((a) => !fired.has(a)), 'alerts no unit test makes fire').toEqual([]);
    for (const a of alerts) expect(a).toMatch(/^Tandem[A-Z][A-Za-z]+$/);

    // The same tests against a rule that never fires: promtool must say so.
    await copyFile(RULE_TESTS, join(work, 'tandem-rules.test.yml'));
    const broken = (await readFile(RULES, 'utf8')).replace('expr: tandem_last_backup_success == 0', 'expr: tandem_last_backup_success == 2');
    expect(broken).toContain('tandem_last_backup_success == 2');
    await writeFile(join(work, 'tandem-rules.yml'), broken);
    const bad = await runCommand('promtool', ['test', 'rules', join(work, 'tandem-rules.test.yml')]);
    expect(bad.code).not.toBe(0);
    expect(bad.stdout.toString() + bad.stderr).toContain('TandemBackupFailed');
  });

  it('every metric the rules read is one the agents export', async () => {
    const rules = (fromYaml(await readFile(RULES, 'utf8')) as RuleFile).groups.flatMap((g) => g.rules);
    const used = new Set(rules.flatMap((x) => metricNamesIn(x.expr)));
    expect(used).toContain('tandem_primary_standby_lag_seconds');
    expect(used).toContain('tandem_standby_recovery_point_age_seconds');
    expect([...used].filter((n) => !exported.has(n) && !PROMETHEUS_OWN.has(n)), 'metrics the rules read that no agent exports').toEqual([]);
  });

  it('the dashboard is valid JSON whose every panel query and variable reads exported metrics', async () => {
    const dash = JSON.parse(await readFile(DASHBOARD, 'utf8')) as { uid: string; panels: Panel[]; templating: { list: Array<{ type: string; definition?: string }> } };
    expect(dash.uid).toBe('tandem');
    const panels = panelsOf(dash.panels).filter((p) => p.type !== 'row');
    expect(panels.length).toBeGreaterThanOrEqual(20);
    const used = new Set<string>();
    for (const p of panels) {
      expect(p.targets?.length ?? 0, `panel "${p.title}" has no query`).toBeGreaterThan(0);
      for (const t of p.targets ?? []) {
        const names = metricNamesIn(t.expr);
        expect(names.length, `panel "${p.title}": ${t.expr}`).toBeGreaterThan(0);
        for (const n of names) used.add(n);
      }
    }
    for (const v of dash.templating.list.filter((x) => x.type === 'query')) {
      const m = /^label_values\(([a-zA-Z_:][a-zA-Z0-9_:]*),/.exec(v.definition ?? '');
      expect(m, `variable query ${v.definition}`).not.toBeNull();
      used.add(m![1]!);
    }
    expect(used).toContain('tandem_primary_standby_lag_seconds');
    expect(used).toContain('tandem_standby_apply_lag_seconds');
    expect([...used].filter((n) => !exported.has(n)), 'metrics the dashboard reads that no agent exports').toEqual([]);
    // Both agents' own metrics are on it, all of them.
    const ours = [...exported].filter((n) => n.startsWith('tandem_'));
    expect(ours.filter((n) => !used.has(n)), 'tandem metrics the dashboard does not show').toEqual([]);
  });

  it('the name check itself: a misspelt metric is caught', () => {
    expect(metricNamesIn('increase(tandem_backup_failure_total{kind=~"a|b"}[5m]) > 0 and on (instance) up == 1')).toEqual(['tandem_backup_failure_total', 'up']);
    expect(exported.has('tandem_backup_failure_total')).toBe(false);
    expect(exported.has('tandem_backup_failures_total')).toBe(true);
    expect(exported.has('tandem_standby_applied_lag_seconds')).toBe(false);
  });
});
