/**
 * Signing requests to the volume API with AWS Signature Version 4, service `execute-api`: what
 * API Gateway's IAM authorization checks on AWS, and what the local stand-in checks the same way
 * (local/iam-auth.ts). The signature itself is the AWS SDK's (`@smithy/signature-v4`), so
 * clients sign exactly as the SDK signs calls to AWS services; the credentials come from the
 * SDK's standard chain (`--profile` or `AWS_PROFILE`, the environment, the shared credentials
 * and config files, SSO, a web identity token, the container or instance role).
 *
 * Used by the `sledge` CLI, the NBD gateway, the tests and the bench; the head never signs.
 *
 * @example
 * const sign = await requestSigner({ apiUrl: 'http://127.0.0.1:3000', profile: 'sledge-tenant-a' });
 * const res = await signedFetch(sign, 'http://127.0.0.1:3000/volumes', { method: 'GET' });
 */
import { createHash, createHmac, type Hash, type Hmac } from 'node:crypto';
import { SignatureV4 } from '@smithy/signature-v4';

/** The service name API Gateway's IAM authorization expects in the credential scope. */
export const SIGNING_SERVICE = 'execute-api';

export interface SigningCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
  /** When temporary credentials expire; the chain refreshes them before. */
  expiration?: Date;
}

/** A provider of credentials, called before each signature (the SDK's providers memoize and refresh). */
export type CredentialSource = SigningCredentials | (() => Promise<SigningCredentials>);

/**
 * SHA-256 and HMAC-SHA-256 over node:crypto, in the shape the SDK's signer takes (`Checksum`).
 * Node's hashing is native, so a 4 MiB body costs a few milliseconds to hash.
 */
export class Sha256 {
  private hash: Hash | Hmac;
  private readonly secret: string | Uint8Array | undefined;
  constructor(secret?: string | ArrayBuffer | ArrayBufferView) {
    this.secret =
      secret === undefined || typeof secret === 'string'
        ? secret
        : ArrayBuffer.isView(secret)
          ? new Uint8Array(secret.buffer, secret.byteOffset, secret.byteLength)
          : new Uint8Array(secret);
    this.hash = this.fresh();
  }
  private fresh(): Hash | Hmac {
    return this.secret === undefined ? createHash('sha256') : createHmac('sha256', this.secret);
  }
  update(data: string | ArrayBuffer | ArrayBufferView): void {
    this.hash.update(
      typeof data === 'string' ? data : ArrayBuffer.isView(data) ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength) : new Uint8Array(data),
    );
  }
  async digest(): Promise<Uint8Array> {
    return new Uint8Array(this.hash.digest());
  }
  reset(): void {
    this.hash = this.fresh();
  }
}

/** The region in an API Gateway URL (`https://abc123.execute-api.eu-west-1.amazonaws.com`), if it is one. */
export function regionOfApiUrl(apiUrl: string): string | undefined {
  try {
    return /\.execute-api\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$/.exec(new URL(apiUrl).hostname)?.[1];
  } catch {
    return undefined;
  }
}

/**
 * The region to sign for: the one asked for, else the one in an API Gateway URL, else
 * `AWS_REGION` / `AWS_DEFAULT_REGION`, else us-east-1 (the local stand-in's).
 */
export function signingRegion(apiUrl: string, region?: string, env: NodeJS.ProcessEnv = process.env): string {
  return region || regionOfApiUrl(apiUrl) || env.AWS_REGION || env.AWS_DEFAULT_REGION || 'us-east-1';
}

/** The SDK's default credential chain, for `profile` when given (else `AWS_PROFILE`, else the environment first). */
export async function credentialChain(profile?: string): Promise<() => Promise<SigningCredentials>> {
  const { defaultProvider } = await import('@aws-sdk/credential-provider-node');
  // With a profile named, the SDK warns on stderr when AWS_ACCESS_KEY_ID is also set; the
  // profile was asked for, so the warning tells the user nothing.
  const quiet = { debug() {}, info() {}, warn() {}, error() {} };
  const explicit = profile ?? process.env.AWS_PROFILE;
  return defaultProvider(explicit ? { profile: explicit, logger: quiet } : {}) as () => Promise<SigningCredentials>;
}

/** Signs one request: returns the headers to send with it (the given ones plus the signature's). */
export type RequestSigner = (request: {
  method: string;
  url: string;
  headers?: Record<string, string>;
  /** The body, or its pieces in the order they are sent (hashed one after another, never joined). */
  body?: Uint8Array | string | readonly Uint8Array[];
}) => Promise<Record<string, string>>;

export interface RequestSignerOptions {
  /** The API's base URL; the region is read from it when it is an API Gateway URL. */
  apiUrl: string;
  /** A profile of the shared credentials/config files; default `AWS_PROFILE`, else the default chain. */
  profile?: string;
  /** Default: see `signingRegion`. */
  region?: string;
  /** Fixed credentials instead of the chain (tests). */
  credentials?: CredentialSource;
  /** The signing time (tests of stale signatures); default now. */
  now?: () => Date;
}

/**
 * A signer for requests to the API at `apiUrl`. Each request is signed as the SDK signs:
 * `host`, `x-amz-date`, `x-amz-content-sha256` (the body's SHA-256) and every other header given,
 * the path and the query string.
 */
export async function requestSigner(opts: RequestSignerOptions): Promise<RequestSigner> {
  const credentials = opts.credentials ?? (await credentialChain(opts.profile));
  const signer = new SignatureV4({
    service: SIGNING_SERVICE,
    region: signingRegion(opts.apiUrl, opts.region),
    credentials: typeof credentials === 'function' ? credentials : async () => credentials,
    sha256: Sha256,
  });
  return async ({ method, url, headers = {}, body }) => {
    const u = new URL(url);
    const query: Record<string, string | string[]> = {};
    for (const [k, v] of u.searchParams) {
      const prior = query[k];
      query[k] = prior === undefined ? v : [prior, v].flat();
    }
    const lower: Record<string, string> = { host: u.host };
    for (const [k, v] of Object.entries(headers)) lower[k.toLowerCase()] = v;
    // A body in pieces: its payload hash is computed here, over each piece in turn, and given to
    // the signer as x-amz-content-sha256 (which it then signs as the payload hash).
    if (Array.isArray(body)) {
      const hash = createHash('sha256');
      for (const piece of body as readonly Uint8Array[]) hash.update(piece);
      lower['x-amz-content-sha256'] = hash.digest('hex');
    }
    const signed = await signer.sign(
      {
        method: method.toUpperCase(),
        protocol: u.protocol,
        hostname: u.hostname,
        ...(u.port ? { port: Number(u.port) } : {}),
        path: u.pathname,
        query,
        headers: lower,
        body: Array.isArray(body) ? undefined : (body as Uint8Array | string | undefined),
      },
      opts.now ? { signingDate: opts.now() } : {},
    );
    // fetch sets Host itself, from the same URL.
    const { host: _host, ...out } = signed.headers as Record<string, string>;
    return out;
  };
}

/** fetch, signed. `body` is sent as is (a Buffer is a Uint8Array). */
export async function signedFetch(
  sign: RequestSigner,
  url: string,
  init: { method?: string; headers?: Record<string, string>; body?: Uint8Array | string; signal?: AbortSignal } = {},
): Promise<Response> {
  const method = init.method ?? 'GET';
  const headers = await sign({ method, url, ...(init.headers ? { headers: init.headers } : {}), ...(init.body !== undefined ? { body: init.body } : {}) });
  return fetch(url, {
    method,
    headers,
    ...(init.body !== undefined ? { body: init.body as unknown as BodyInit } : {}),
    ...(init.signal ? { signal: init.signal } : {}),
  });
}
