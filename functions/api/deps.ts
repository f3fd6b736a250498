import { agentClient } from '#core/agent-client.ts';
import type { BackupDeps } from '#core/backups.ts';
import { EventPublisher } from '#core/events.ts';
import type { Deps } from '#core/databases.ts';
import { getStore } from '#core/http.ts';
import { Workflows } from '#core/workflows.ts';

let deps: Deps | undefined;
/** The domain's dependencies, built once per Lambda container. */
export const apiDeps = (): Deps => (deps ??= { store: getStore(), workflows: new Workflows(), events: new EventPublisher() });

/** With the agent, for what reads the archives (recovery window, download links, restores) or the live server (plan changes). */
export const backupDeps = async (): Promise<BackupDeps> => ({ ...apiDeps(), agent: await agentClient() });
