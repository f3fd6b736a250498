/**
 * The single table's shape: key attributes, indexes and TTL. CDK creates the table from this and
 * the local runtime creates the same table in DynamoDB Local.
 */
export const tableDesign = {
  partitionKey: 'pk',
  sortKey: 'sk',
  timeToLiveAttribute: 'expiresAt',
  indexes: [
    /** By owner: an account's databases (`OWNER#<account>` / `DB#<name>`); an operation by id (`OP#<id>`). */
    { name: 'gsi1', partitionKey: 'gsi1pk', sortKey: 'gsi1sk' },
    /**
     * Sparse: unfinished operations only (`ACTIVE` / created-at), for the operation reaper; webhook deliveries
     * waiting for an attempt (`WEBHOOK_RETRY` / due time), for the webhook retry schedule.
     */
    { name: 'gsi2', partitionKey: 'gsi2pk', sortKey: 'gsi2sk' },
    /**
     * Sparse: databases by backup hour (`BACKUP_HOUR#<hh>` / `DB#<id>`), for the backup scheduler and the
     * retention pruner. Kept after deletion while the database still has backups.
     */
    { name: 'gsi3', partitionKey: 'gsi3pk', sortKey: 'gsi3sk' },
    /**
     * Sparse: maintenance items waiting for or running in a window, by the start slot of the window occurrence
     * they are planned in (`MW#<weekday>#<hh>` / `<window start>#<maintenance id>`), for the maintenance
     * dispatcher: one query per slot that can be open, reading only what is due. Removed once finished.
     */
    { name: 'gsi4', partitionKey: 'gsi4pk', sortKey: 'gsi4sk' },
  ],
} as const;
