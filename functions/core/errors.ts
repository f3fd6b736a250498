/**
 * One error model. A DomainError becomes an RFC 9457 problem in the API and a named error that a
 * state machine's Catch matches on (hence the fixed `name` on every subclass).
 */
export interface FieldIssue {
  /** JSON pointer into the request, e.g. `/body/plan`. */
  pointer: string;
  detail: string;
}

export abstract class DomainError extends Error {
  abstract readonly status: number;
  abstract readonly title: string;
  readonly errors?: FieldIssue[];
  readonly headers?: Record<string, string>;

  constructor(detail: string, options?: { errors?: FieldIssue[]; headers?: Record<string, string>; cause?: unknown }) {
    super(detail, { cause: options?.cause });
    this.errors = options?.errors;
    this.headers = options?.headers;
  }

  get type(): string {
    return `https://dbplane.dev/problems/${this.name.replace(/([a-z])([A-Z])/g, '$1-$2').toLowerCase()}`;
  }
}

export class BadRequest extends DomainError {
  override readonly name = 'BadRequest';
  readonly status = 400;
  readonly title = 'The request is not valid';
}

export class Unauthorized extends DomainError {
  override readonly name = 'Unauthorized';
  readonly status = 401;
  readonly title = 'A valid API token is required';
}

export class Forbidden extends DomainError {
  override readonly name = 'Forbidden';
  readonly status = 403;
  readonly title = 'The token does not allow this';
}

export class NotFound extends DomainError {
  override readonly name = 'NotFound';
  readonly status = 404;
  readonly title = 'Not found';
}

export class MethodNotAllowed extends DomainError {
  override readonly name = 'MethodNotAllowed';
  readonly status = 405;
  readonly title = 'Method not allowed';
}

export class Conflict extends DomainError {
  override readonly name = 'Conflict';
  readonly status = 409;
  readonly title = 'Conflict';
}

/** Another long operation holds the database's lock. */
export class OperationInProgress extends DomainError {
  override readonly name = 'OperationInProgress';
  readonly status = 409;
  readonly title = 'Another operation is in progress on this database';
  constructor(readonly operationId: string) {
    super(`operation ${operationId} is in progress; retry when it has finished`);
  }
}

export class PayloadTooLarge extends DomainError {
  override readonly name = 'PayloadTooLarge';
  readonly status = 413;
  readonly title = 'The request body is too large';
}

export class UnsupportedMediaType extends DomainError {
  override readonly name = 'UnsupportedMediaType';
  readonly status = 415;
  readonly title = 'The request body must be application/json';
}

export class Unprocessable extends DomainError {
  override readonly name = 'Unprocessable';
  readonly status = 422;
  readonly title = 'The request cannot be carried out';
}

/** The agent could not be reached or answered 5xx: worth retrying. */
export class AgentUnavailable extends DomainError {
  override readonly name = 'AgentUnavailable';
  readonly status = 503;
  readonly title = 'The database host is unavailable';
}

/** The agent refused a call (4xx): retrying will not help. */
export class AgentRefused extends DomainError {
  override readonly name = 'AgentRefused';
  readonly status = 502;
  readonly title = 'The database host refused the request';
}

/** A server ended `failed` on its host. */
export class InstanceFailed extends DomainError {
  override readonly name = 'InstanceFailed';
  readonly status = 502;
  readonly title = 'The database server failed';
}

/** A backup ended `failed` on its host (or vanished). */
export class BackupFailed extends DomainError {
  override readonly name = 'BackupFailed';
  readonly status = 502;
  readonly title = 'The backup failed';
}

/** A restore ended `failed` on its host; in place, the database kept its data. */
export class RestoreFailed extends DomainError {
  override readonly name = 'RestoreFailed';
  readonly status = 502;
  readonly title = 'The restore failed';
}

/** After a plan change the server does not run with the target plan's settings. */
export class PlanNotApplied extends DomainError {
  override readonly name = 'PlanNotApplied';
  readonly status = 502;
  readonly title = 'The plan change did not take effect';
}

export class UpgradeNotApplied extends DomainError {
  override readonly name = 'UpgradeNotApplied';
  readonly status = 502;
  readonly title = 'The upgrade did not take effect';
}
