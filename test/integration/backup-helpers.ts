/**
 * Helpers for the backup tests (docs/backup.md): start a backup or restore over the API and wait
 * for its job, read whole volumes and snapshots.
 */
import { expect } from 'vitest';
import { http } from './helpers.ts';

export const MiB = 1024 * 1024;
const READ_BYTES = 4 * MiB;

export const json = (body: unknown) => ({ body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });

/** Polls `path` until its `state` is one of `states` (or `timeoutMs` passes). */
export async function waitState(url: string, path: string, states: string[], timeoutMs = 120_000): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await http(`${url}${path}`);
    expect(r.status, r.body.toString()).toBe(200);
    if (states.includes(r.json.state)) return r.json;
    if (Date.now() > deadline) throw new Error(`${path} still ${r.json.state} after ${timeoutMs} ms: ${JSON.stringify(r.json)}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

export async function snapshot(url: string, volumeId: string): Promise<any> {
  const r = await http(`${url}/volumes/${volumeId}/snapshots`, { method: 'POST', ...json({}) });
  expect(r.status, r.body.toString()).toBe(201);
  return r.json;
}

/** Backs up a snapshot and waits until the backup is complete; returns its final view. */
export async function backup(url: string, volumeId: string, snapshotId: string): Promise<any> {
  const r = await http(`${url}/volumes/${volumeId}/backups`, { method: 'POST', ...json({ snapshotId }) });
  expect(r.status, r.body.toString()).toBe(202);
  const done = await waitState(url, `/backups/${r.json.backupId}`, ['complete', 'failed']);
  expect(done.state, JSON.stringify(done)).toBe('complete');
  return done;
}

/** Restores a backup and waits until the restore is complete; returns its final view. */
export async function restore(url: string, backupId: string, sizeBytes?: number): Promise<any> {
  const r = await http(`${url}/restores`, { method: 'POST', ...json(sizeBytes === undefined ? { backupId } : { backupId, sizeBytes }) });
  expect(r.status, r.body.toString()).toBe(202);
  const done = await waitState(url, `/restores/${r.json.restoreId}`, ['complete', 'failed']);
  expect(done.state, JSON.stringify(done)).toBe('complete');
  expect(done.volumeId).toBe(r.json.volumeId);
  return done;
}

/** The whole of a volume (`/volumes/{id}/data`) or snapshot (`/snapshots/{id}/data`). */
export async function readAll(url: string, what: 'volumes' | 'snapshots', id: string, sizeBytes: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (let offset = 0; offset < sizeBytes; offset += READ_BYTES) {
    const length = Math.min(READ_BYTES, sizeBytes - offset);
    const r = await http(`${url}/${what}/${id}/data?offset=${offset}&length=${length}`);
    expect(r.status, r.body.toString()).toBe(200);
    parts.push(r.body);
  }
  return Buffer.concat(parts);
}

/** Whether two buffers are equal, naming the first differing 4 KiB block when not. */
export function firstDifference(a: Buffer, b: Buffer, bs = 4096): string | null {
  if (a.length !== b.length) return `lengths differ: ${a.length} and ${b.length}`;
  for (let off = 0; off < a.length; off += bs) {
    if (!a.subarray(off, off + bs).equals(b.subarray(off, off + bs))) return `block ${off / bs} (byte ${off}) differs`;
  }
  return null;
}
