/**
 * Helpers for integration tests: an HTTP client for the local API, and the environment
 * (table, bucket, queue names) so tests can inspect or damage what is stored.
 */
import { inject } from 'vitest';

/** Puts the control plane's environment into this worker so shared modules can be used. */
export function useSledgeEnv(): { apiUrl: string } {
  const env = inject('sledgeEnv');
  Object.assign(process.env, env, { AWS_ENDPOINT_URL: inject('endpointUrl') });
  process.env.AWS_ACCESS_KEY_ID ??= 'test';
  process.env.AWS_SECRET_ACCESS_KEY ??= 'test';
  process.env.AWS_REGION ??= 'us-east-1';
  return { apiUrl: inject('apiUrl') };
}

export interface HttpResult {
  status: number;
  headers: Headers;
  body: Buffer;
  json: any;
}

export async function http(url: string, init: { method?: string; body?: Buffer | string; headers?: Record<string, string> } = {}): Promise<HttpResult> {
  const body = typeof init.body === 'string' || init.body === undefined ? init.body : new Uint8Array(init.body);
  const res = await fetch(url, { method: init.method ?? 'GET', body, headers: init.headers });
  const bytes = Buffer.from(await res.arrayBuffer());
  let json: any;
  if ((res.headers.get('content-type') ?? '').includes('json')) json = JSON.parse(bytes.toString('utf8'));
  return { status: res.status, headers: res.headers, body: bytes, json };
}

export class Api {
  constructor(readonly url: string) {}

  async createVolume(body: Record<string, unknown>): Promise<any> {
    const r = await http(`${this.url}/volumes`, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
    if (r.status !== 201) throw new Error(`create volume: ${r.status} ${r.body.toString()}`);
    return r.json;
  }

  async write(volumeId: string, offset: number, data: Buffer): Promise<any> {
    const r = await http(`${this.url}/volumes/${volumeId}/data?offset=${offset}`, {
      method: 'PUT',
      body: data,
      headers: { 'content-type': 'application/octet-stream' },
    });
    if (r.status !== 200) throw new Error(`write ${volumeId} @${offset}+${data.length}: ${r.status} ${r.body.toString()}`);
    return r.json;
  }

  async read(volumeId: string, offset: number, length: number): Promise<Buffer> {
    const r = await this.readRaw(volumeId, offset, length);
    if (r.status !== 200) throw new Error(`read ${volumeId} @${offset}+${length}: ${r.status} ${r.body.toString()}`);
    return r.body;
  }

  readRaw(volumeId: string, offset: number, length: number): Promise<HttpResult> {
    return http(`${this.url}/volumes/${volumeId}/data?offset=${offset}&length=${length}`);
  }

  async trim(volumeId: string, offset: number, length: number): Promise<any> {
    const r = await http(`${this.url}/volumes/${volumeId}/trim`, { method: 'POST', body: JSON.stringify({ offset, length }), headers: { 'content-type': 'application/json' } });
    if (r.status !== 200) throw new Error(`trim ${volumeId} @${offset}+${length}: ${r.status} ${r.body.toString()}`);
    return r.json;
  }

  async batch(volumeId: string, body: Buffer): Promise<any> {
    const r = await http(`${this.url}/volumes/${volumeId}/batch`, { method: 'POST', body, headers: { 'content-type': 'application/vnd.sledge.batch' } });
    if (r.status !== 200) throw new Error(`batch ${volumeId}: ${r.status} ${r.body.toString()}`);
    return r.json;
  }

  async describe(volumeId: string): Promise<HttpResult> {
    return http(`${this.url}/volumes/${volumeId}`);
  }
}
