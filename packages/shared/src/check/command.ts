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
