/**
 * Who is calling, and what each route lets them do (docs/security.md).
 *
 * API Gateway's IAM authorization (or the local stand-in) has already checked the request's
 * SigV4 signature and put the caller in `requestContext.authorizer.iam`. Here that identity
 * becomes a `Principal`, an operator or a tenant, and the router applies the one rule of each
 * route before its handler runs:
 *
 * - `OPERATOR`: operators only; a tenant gets 403.
 * - `ANY_PRINCIPAL`: any signed caller (create a volume, list volumes: a tenant's list holds
 *   only its own, see `ownerFilter`).
 * - `owned(resource, param)`: the resource named by the path parameter belongs to the caller,
 *   or the caller is an operator. Another tenant's resource (or one that does not exist) is
 *   404 with the same message either way, so a tenant cannot learn that it exists.
 *
 * Routes declare their rule when they register (`router.on(method, path, access, handler)`).
 * A route registered without one gets `owned('volume', 'volumeId')` when its path has a
 * `{volumeId}` and `OPERATOR` otherwise: a new route is never open to every tenant by accident.
 * Owners are looked up through resolvers registered per resource kind (`router.resource()`),
 * so a new kind (snapshots, say) adds its resolver and its routes inherit the check.
 */
import { ForbiddenError, NotFoundError } from '../core/errors.ts';

/** A caller, as the head sees it. */
export interface Principal {
  /**
   * The canonical ARN: an IAM user's ARN, or for a role session the role's ARN without its path
   * (`arn:aws:iam::<account>:role/<name>`), so every session of a role is the same owner.
   * `anonymous` when authorization is off.
   */
  arn: string;
  operator: boolean;
  /** The access key the request was signed with, for the audit log. */
  accessKey?: string;
}

export type RouteAccess = (
  | { kind: 'operator' }
  | { kind: 'principal' }
  | {
      kind: 'owner';
      /** The resource kind, as registered with `router.resource()` (e.g. `volume`). */
      resource: string;
      /** The path parameter that names it (e.g. `volumeId`). */
      param: string;
    }
) & {
  /** Whether a request is written to the audit log. Default: every method but GET and HEAD. */
  audit?: boolean;
};

export const OPERATOR: RouteAccess = { kind: 'operator' };
export const ANY_PRINCIPAL: RouteAccess = { kind: 'principal' };

/** The caller must own the `resource` that path parameter `param` names (operators may act on any). */
export function owned(resource: string, param: string, opts: { audit?: boolean } = {}): RouteAccess {
  return { kind: 'owner', resource, param, ...opts };
}

/** The volume in `{volumeId}` belongs to the caller. */
export const VOLUME_OWNER = owned('volume', 'volumeId');
/** The same, for the data path (reads, writes, trims, batches), which is not audited line by line. */
export const VOLUME_DATA = owned('volume', 'volumeId', { audit: false });

/** The rule a route gets when it declares none (see the file comment). */
export function defaultAccess(path: string): RouteAccess {
  return path.includes('{volumeId}') ? VOLUME_OWNER : OPERATOR;
}

/** Looks up who owns a resource: its owner's canonical ARN, `undefined` for one with no owner, `null` when it does not exist. */
export type OwnerResolver = (id: string) => Promise<string | undefined | null>;

export interface AuthSettings {
  /** `iam`: the event must carry API Gateway's IAM identity. `none`: everyone is an operator. */
  mode: 'iam' | 'none';
  /** Canonical or raw ARNs of the operators (canonicalized here). */
  operators: readonly string[];
}

/**
 * The canonical form of a principal ARN (see `Principal.arn`).
 *
 * @example
 * canonicalArn('arn:aws:sts::123456789012:assumed-role/Ops/alice'); // 'arn:aws:iam::123456789012:role/Ops'
 * canonicalArn('arn:aws:iam::123456789012:role/team/Ops');          // 'arn:aws:iam::123456789012:role/Ops'
 */
export function canonicalArn(arn: string): string {
  const assumed = /^arn:([^:]+):sts::(\d+):assumed-role\/([^/]+)\/.+$/.exec(arn);
  if (assumed) return `arn:${assumed[1]}:iam::${assumed[2]}:role/${assumed[3]}`;
  const role = /^arn:([^:]+):iam::(\d+):role\/(?:.*\/)?([^/]+)$/.exec(arn);
  if (role) return `arn:${role[1]}:iam::${role[2]}:role/${role[3]}`;
  return arn;
}

interface IamContext {
  accessKey?: string | null;
  userArn?: string | null;
}

/**
 * The caller of an API Gateway event. With `mode: 'iam'`, an event without an IAM identity is
 * refused (403): IAM authorization was turned off on the API without telling the head, or the
 * head was invoked some other way.
 */
export function principalOf(requestContext: unknown, settings: AuthSettings): Principal {
  if (settings.mode === 'none') return { arn: 'anonymous', operator: true };
  const iam = (requestContext as { authorizer?: { iam?: IamContext } } | undefined)?.authorizer?.iam;
  if (!iam?.userArn) {
    throw new ForbiddenError('the request is not signed: sign it with AWS SigV4 for the service execute-api (the sledge CLI and the NBD gateway do)');
  }
  const arn = canonicalArn(iam.userArn);
  const operators = new Set(settings.operators.map(canonicalArn));
  return { arn, operator: operators.has(arn), ...(iam.accessKey ? { accessKey: iam.accessKey } : {}) };
}

/**
 * Applies a route's rule; throws ForbiddenError (403) or NotFoundError (404, for another
 * tenant's resource as for a missing one).
 */
export async function authorize(
  access: RouteAccess,
  principal: Principal,
  params: Record<string, string>,
  route: string,
  resolvers: ReadonlyMap<string, OwnerResolver>,
): Promise<void> {
  if (principal.operator) return;
  if (access.kind === 'principal') return;
  if (access.kind === 'operator') throw new ForbiddenError(`${route} is for operators; ${principal.arn} is not one`);
  const resolve = resolvers.get(access.resource);
  if (!resolve) throw new ForbiddenError(`${route} names a ${access.resource}, whose owners this head cannot look up; only operators may call it`);
  const id = params[access.param];
  if (id === undefined) throw new ForbiddenError(`${route} has no path parameter ${access.param}; only operators may call it`);
  const owner = await resolve(id);
  // The same answer whether the resource is missing or someone else's (docs/security.md).
  if (owner === null || owner === undefined || owner !== principal.arn) throw new NotFoundError(`${access.resource} ${id} does not exist`);
}

/**
 * The owner a tenant's listing is limited to; undefined for an operator, who sees everything.
 */
export function ownerFilter(principal: Principal | undefined): string | undefined {
  return principal === undefined || principal.operator ? undefined : principal.arn;
}

/** One line of the audit log: who did what to which resource, and how it ended. */
export interface AuditRecord {
  audit: 'sledge';
  at: string;
  principal: string;
  accessKey?: string;
  /** `METHOD /path/template`. */
  action: string;
  /** The path parameters (volumeId, dumpId, sled and drive...). */
  resource: Record<string, string>;
  status: number;
  result: 'allowed' | 'denied' | 'failed';
  requestId?: string;
}

let sink: (record: AuditRecord) => void = (record) => console.log(JSON.stringify(record));

/** Where audit records go; default one JSON line on stdout (CloudWatch Logs on Lambda). */
export function setAuditSink(next: (record: AuditRecord) => void): void {
  sink = next;
}

export function audit(record: Omit<AuditRecord, 'audit' | 'at'>): void {
  try {
    sink({ audit: 'sledge', at: new Date().toISOString(), ...record });
  } catch (err) {
    console.error('audit sink failed', err);
  }
}
