import { resolve } from 'node:path';
import type { CommandContext } from '../cli.js';
import type { Filestore } from '../filestore/filestore.js';
import { checkExitCode, checkReportJson, formatCheckReport, runChecks, type CheckDef } from './runner.js';

/** An option's file, absolute (so that the report names it unambiguously); undefined when not given. */
export const optionalPath = (value: unknown): string | undefined => (typeof value === 'string' && value !== '' ? resolve(value) : undefined);

/**
 * The body of both agents' `check` commands: runs the checks, prints the report (one line per
 * check, or with --json the JSON document) and returns the exit status. The filestore a check
 * opened is closed afterwards, whatever happened.
 */
export async function runCheckCommand<Ctx extends { filestore?: Filestore }>(
  checks: ReadonlyArray<CheckDef<Ctx>>,
  ctx: Ctx,
  { values, out }: Pick<CommandContext, 'values' | 'out'>,
): Promise<0 | 1> {
  try {
    const results = await runChecks(checks, ctx);
    if (values.json === true) out(checkReportJson(results));
    else for (const line of formatCheckReport(results)) out(line);
    return checkExitCode(results);
  } finally {
    await ctx.filestore?.close();
  }
}

/**
 * The sites a `check` looks at: the one --site names; without --site, each site of a config that
 * holds several (one section of the report each); else one run whose config check loads the only
 * site, or reports why the config does not load (`undefined`: no site named).
 */
export function sitesToCheck(configFile: string, site: string | undefined, load: (file: string) => { sites: Array<{ site: string }> }): Array<string | undefined> {
  if (site !== undefined) return [site];
  let sites: Array<{ site: string }>;
  try {
    sites = load(configFile).sites;
  } catch {
    return [undefined];
  }
  return sites.length > 1 ? sites.map((s) => s.site) : [undefined];
}

/**
 * runCheckCommand for each of `sites` (sitesToCheck): one site reports as runCheckCommand does;
 * several report a section per site ("site NAME:" and its report, indented), then one line for all,
 * or with --json {"ok", "sites": [{"site", "ok", "checks"}]}. Exit status 1 when a check of any site failed.
 */
export async function runSiteChecks<Ctx extends { filestore?: Filestore }>(
  checks: ReadonlyArray<CheckDef<Ctx>>,
  sites: Array<string | undefined>,
  ctxFor: (site: string | undefined) => Ctx,
  { values, out }: Pick<CommandContext, 'values' | 'out'>,
): Promise<0 | 1> {
  if (sites.length === 1) return runCheckCommand(checks, ctxFor(sites[0]), { values, out });
  const reports: Array<{ site: string; results: Awaited<ReturnType<typeof runChecks>> }> = [];
  for (const site of sites) {
    const ctx = ctxFor(site);
    try {
      reports.push({ site: site ?? '?', results: await runChecks(checks, ctx) });
    } finally {
      await ctx.filestore?.close();
    }
  }
  const failed = reports.filter((r) => checkExitCode(r.results) !== 0).map((r) => r.site);
  if (values.json === true) {
    out(JSON.stringify({ ok: failed.length === 0, sites: reports.map((r) => ({ site: r.site, ok: checkExitCode(r.results) === 0, checks: r.results })) }));
  } else {
    for (const r of reports) {
      out(`site ${r.site}:`);
      for (const line of formatCheckReport(r.results)) out(`  ${line}`);
      out('');
    }
    out(failed.length === 0 ? `check passed for all ${reports.length} sites` : `CHECK FAILED for ${failed.length} of ${reports.length} sites: ${failed.join(', ')}`);
  }
  return failed.length === 0 ? 0 : 1;
}
