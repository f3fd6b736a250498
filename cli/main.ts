import { Command, CommanderError } from 'commander';
import { ApiError, CliError } from './client.ts';
import { registerAdmin } from './commands/admin.ts';
import { registerBackups } from './commands/backups.ts';
import { registerCatalog } from './commands/catalog.ts';
import { registerDatabases } from './commands/databases.ts';
import { registerLogin } from './commands/login.ts';
import { registerMaintenance } from './commands/maintenance.ts';
import { registerOperations } from './commands/operations.ts';
import { registerWebhooks } from './commands/webhooks.ts';

/** Exit codes: 0 ok, 1 the request or operation failed, 2 the command line was wrong. */
const usageExit = 2;
const failureExit = 1;

function buildProgram(): Command {
  const program = new Command('dbplane')
    .description('manage dbplane databases')
    .option('--api-url <url>', 'API endpoint (env DBPLANE_API_URL, or the one saved by login)')
    .option('--token <token>', 'API token (env DBPLANE_TOKEN, or the one saved by login)')
    .option('--json', 'print the API\'s JSON instead of tables')
    .configureHelp({ showGlobalOptions: true })
    .showHelpAfterError('(run with --help for usage)')
    // Set before the subcommands are added so they inherit it: commander would otherwise exit 1 itself.
    .exitOverride();
  registerLogin(program);
  registerDatabases(program);
  registerOperations(program);
  registerBackups(program);
  registerCatalog(program);
  registerMaintenance(program);
  registerWebhooks(program);
  registerAdmin(program);
  return program;
}

function report(err: unknown): number {
  if (err instanceof CommanderError) {
    // commander has already printed the message (or the help, whose exit code is 0).
    return err.exitCode === 0 ? 0 : usageExit;
  }
  if (err instanceof ApiError) {
    const { title, detail, status, errors } = err.problem;
    const lines = [`${title}${detail ? `: ${detail}` : ''} (HTTP ${status})`, ...(errors ?? []).map((e) => `  ${e.pointer}: ${e.detail}`)];
    process.stderr.write(`${lines.join('\n')}\n`);
    return failureExit;
  }
  if (err instanceof CliError) {
    process.stderr.write(`${err.message}\n`);
    return failureExit;
  }
  process.stderr.write(`unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  return failureExit;
}

try {
  await buildProgram().parseAsync(process.argv);
} catch (err) {
  process.exitCode = report(err);
}
