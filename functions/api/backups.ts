import { NotFound } from '#core/errors.ts';
import {
  downloadLink, listBackups, recoveryWindow, requestBackup, requestRestore, setBackupSchedule,
} from '#core/backups.ts';
import { findDatabase } from '#core/databases.ts';
import { apiHandler, json } from '#core/http.ts';
import { databaseView } from '#core/model.ts';
import { apiDeps, backupDeps } from './deps.ts';
import { BackupParams, BackupScheduleBody, DownloadQuery, IdParams, RestoreRequest } from './schemas.ts';

export const list = apiHandler({ access: 'account', params: IdParams }, async ({ caller, params }) => {
  return json(200, { backups: await listBackups(apiDeps(), caller, params.id) });
});

export const create = apiHandler({ access: 'account', params: IdParams, idempotent: true }, async ({ caller, params }) => {
  const { backup, operation } = await requestBackup(apiDeps(), caller, params.id);
  return json(202, { backup, operation }, { location: `/databases/${backup.databaseId}/backups/${backup.id}` });
});

export const get = apiHandler({ access: 'account', params: BackupParams }, async ({ caller, params }) => {
  const backup = (await listBackups(apiDeps(), caller, params.id)).find((b) => b.id === params.backupId);
  if (!backup) throw new NotFound(`no backup "${params.backupId}"`);
  return json(200, backup);
});

export const window = apiHandler({ access: 'account', params: IdParams }, async ({ caller, params, store }) => {
  return json(200, await recoveryWindow(await backupDeps(), await findDatabase(store, caller, params.id)));
});

export const download = apiHandler({ access: 'account', params: BackupParams, query: DownloadQuery }, async ({ caller, params, query }) => {
  return json(200, await downloadLink(await backupDeps(), caller, params.id, params.backupId, query.format));
});

export const schedule = apiHandler({ access: 'account', params: IdParams, body: BackupScheduleBody }, async ({ caller, params, body, store }) => {
  return json(200, databaseView(await setBackupSchedule(store, caller, params.id, body)));
});

export const restore = apiHandler({ access: 'account', params: IdParams, body: RestoreRequest, idempotent: true }, async ({ caller, params, body }) => {
  const { database, operation, ...rest } = await requestRestore(await backupDeps(), caller, params.id, body);
  return json(202, { database: databaseView(database), operation, ...rest }, { location: `/operations/${operation.id}` });
});
