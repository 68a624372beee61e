/**
 * Backups and restores (docs/backup.md) through the local API, against the vault's own local
 * endpoint process, and a raw copy of the same bytes between the two endpoints as the baseline.
 *
 * - A volume of SLEDGE_BENCH_BACKUP_MIB MiB (default 256) written whole with random bytes; a
 *   full backup; then 1% and 10% of its blocks rewritten (64 KiB runs at random places), each
 *   followed by a snapshot and an incremental backup; then a restore of the last backup (the
 *   whole chain). Each is timed from the POST until GET shows it complete.
 * - The baseline: the same number of bytes copied between the endpoints as 16 MiB objects
 *   (GET from the primary's endpoint, PUT to the vault's, 4 at a time), and back for restores.
 * - What each backup shipped (pack object bytes, counted by the vault's S3 client, request
 *   bodies) against the changed blocks, vault requests per GiB shipped and their cost at list
 *   prices, and the catalog's pack record size.
 * - Vault bytes for a parent and 3 clones (each with 1% of its own blocks) against 4
 *   independent full copies.
 *
 * The worker runs in this process, so the vault clients' counters (shared/aws/vault-clients.ts)
 * see every vault request a backup or restore makes.
 */
import { randomBytes } from 'node:crypto';
import { GetItemCommand } from '@aws-sdk/client-dynamodb';
import { CreateBucketCommand, GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { itemSize } from '#shared/aws/capacity.ts';
import { s3 } from '#shared/aws/clients.ts';
import { resetVaultRequestCounts, vaultDynamo, vaultRequestCounts, vaultS3 } from '#shared/aws/vault-clients.ts';
import { vaultConfig } from '#shared/core/vault-config.ts';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const PRICE = { s3PutPerRequest: 0.005 / 1000, s3GetPerRequest: 0.0004 / 1000, dynamoWritePerUnit: 0.625 / 1e6, dynamoReadPerUnit: 0.125 / 1e6 };

export interface BackupBenchContext {
  apiUrl: string;
  table(rows: Array<Record<string, string | number>>): void;
  section(title: string): void;
}

async function call(url: string, method: string, body?: unknown, raw?: Buffer): Promise<any> {
  const res = await fetch(url, {
    method,
    ...(raw ? { headers: { 'content-type': 'application/octet-stream' }, body: new Uint8Array(raw) } : {}),
    ...(body !== undefined ? { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${url}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : undefined;
}

/** GETs `url` until its state is one of `states`; `polls` counts the GETs (each reads the catalog once: the API runs without authorization here, so no owner lookup). */
let polls = 0;
async function until(url: string, states: string[]): Promise<any> {
  for (;;) {
    polls++;
    const j = await call(url, 'GET');
    if (states.includes(j.state)) return j;
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function pool<T>(items: T[], width: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < items.length) await fn(items[next++]!);
  }));
}

async function vaultObjectBytes(prefix: string): Promise<number> {
  let total = 0;
  let token: string | undefined;
  do {
    const page = await vaultS3().send(new ListObjectsV2Command({ Bucket: vaultConfig().bucket, Prefix: prefix, ContinuationToken: token }));
    for (const o of page.Contents ?? []) total += o.Size ?? 0;
    token = page.NextContinuationToken;
  } while (token);
  return total;
}

export async function benchBackup(ctx: BackupBenchContext): Promise<void> {
  const { apiUrl: api, table, section } = ctx;
  const mib = Number(process.env.SLEDGE_BENCH_BACKUP_MIB ?? 256);
  const size = mib * MiB;
  section(`Backups to the vault and restores (docs/backup.md): a ${mib} MiB volume, against a raw copy between the two endpoints`);
  const vol = (await call(`${api}/volumes`, 'POST', { sizeBytes: size })).volumeId as string;
  await pool(
    Array.from({ length: size / (4 * MiB) }, (_, i) => i),
    4,
    async (i) => void (await call(`${api}/volumes/${vol}/data?offset=${i * 4 * MiB}`, 'PUT', undefined, randomBytes(4 * MiB))),
  );
  const rows: Array<Record<string, string | number>> = [];
  const backupOnce = async (label: string, changedBytes: number) => {
    const snap = (await call(`${api}/volumes/${vol}/snapshots`, 'POST', {})).snapshotId as string;
    resetVaultRequestCounts();
    polls = 0;
    const t0 = performance.now();
    const started = await call(`${api}/volumes/${vol}/backups`, 'POST', { snapshotId: snap });
    const done = await until(`${api}/backups/${started.backupId}`, ['complete', 'failed']);
    const seconds = (performance.now() - t0) / 1000;
    if (done.state !== 'complete') throw new Error(`backup ${started.backupId} failed: ${done.error}`);
    const counts = vaultRequestCounts();
    const packBytes = await vaultObjectBytes(`packs/${started.backupId}/`);
    const puts = counts.requests['VaultS3:PutObject'] ?? 0;
    const ddbWrites = Object.entries(counts.requests).filter(([k]) => /VaultDynamoDB:(Put|Update|Delete)Item/.test(k)).reduce((n, [, v]) => n + v, 0);
    // The API answering this process's polls reads the catalog too (once a poll): not the backup's.
    const ddbOther = Object.entries(counts.requests).filter(([k]) => k.startsWith('VaultDynamoDB:')).reduce((n, [, v]) => n + v, 0) - ddbWrites - polls;
    rows.push({
      backup: label,
      'changed MiB': (changedBytes / MiB).toFixed(2),
      'listed MiB': (done.bytesToShip / MiB).toFixed(2),
      'pack MiB': (packBytes / MiB).toFixed(2),
      'shipped/changed': (counts.bytesSent / changedBytes).toFixed(3),
      'vault bytes sent': counts.bytesSent,
      seconds: seconds.toFixed(2),
      'MB/s (changed)': (changedBytes / 1e6 / seconds).toFixed(1),
      'S3 PUT': puts,
      'DDB writes': ddbWrites,
      'DDB reads': ddbOther,
      'S3 PUT per GiB': ((puts * GiB) / changedBytes).toFixed(1),
    });
    return { backupId: started.backupId as string, snapshotId: snap, counts, packBytes };
  };
  await backupOnce('full', size);
  const rewrite = async (fraction: number) => {
    const runs = Math.round((size * fraction) / (64 * 1024));
    const starts = new Set<number>();
    while (starts.size < runs) starts.add(Math.floor(Math.random() * (size / (64 * 1024))));
    await pool([...starts], 4, async (run) => void (await call(`${api}/volumes/${vol}/data?offset=${run * 64 * 1024}`, 'PUT', undefined, randomBytes(64 * 1024))));
    return runs * 64 * 1024;
  };
  await backupOnce('1% incremental', await rewrite(0.01));
  const last = await backupOnce('10% incremental', await rewrite(0.1));
  table(rows);

  // A pack record: its size sets the catalog's write units per pack.
  const packItem = await vaultDynamo().send(
    new GetItemCommand({ TableName: vaultConfig().table, Key: { pk: { S: `pack#${last.backupId}` }, sk: { S: '000000' } }, ConsistentRead: true }),
  );
  const packItemBytes = itemSize(packItem.Item);

  resetVaultRequestCounts();
  polls = 0;
  const t0 = performance.now();
  const r = await call(`${api}/restores`, 'POST', { backupId: last.backupId });
  const restored = await until(`${api}/restores/${r.restoreId}`, ['complete', 'failed']);
  const restoreSeconds = (performance.now() - t0) / 1000;
  if (restored.state !== 'complete') throw new Error(`restore failed: ${restored.error}`);
  const restoreCounts = vaultRequestCounts();
  const restorePolls = polls;

  // The baseline: the same bytes as 16 MiB objects, primary endpoint -> vault endpoint, and back.
  const scratch = `sledge-bench-raw-${Date.now()}`;
  await s3().send(new CreateBucketCommand({ Bucket: scratch }));
  const objects = Array.from({ length: size / (16 * MiB) }, (_, i) => `raw/${i}`);
  for (const key of objects) await s3().send(new PutObjectCommand({ Bucket: scratch, Key: key, Body: randomBytes(16 * MiB) }));
  const t1 = performance.now();
  await pool(objects, 4, async (key) => {
    const got = await s3().send(new GetObjectCommand({ Bucket: scratch, Key: key }));
    const body = Buffer.from(await got.Body!.transformToByteArray());
    await vaultS3().send(new PutObjectCommand({ Bucket: vaultConfig().bucket, Key: `bench-raw/${key}`, Body: body }));
  });
  const rawOut = (performance.now() - t1) / 1000;
  const t2 = performance.now();
  await pool(objects, 4, async (key) => {
    const got = await vaultS3().send(new GetObjectCommand({ Bucket: vaultConfig().bucket, Key: `bench-raw/${key}` }));
    const body = Buffer.from(await got.Body!.transformToByteArray());
    await s3().send(new PutObjectCommand({ Bucket: scratch, Key: `back/${key}`, Body: body }));
  });
  const rawBack = (performance.now() - t2) / 1000;
  const full = rows[0]!;
  table([
    { what: 'full backup', 'MB/s': full['MB/s (changed)']!, 'raw copy MB/s': (size / 1e6 / rawOut).toFixed(1), ratio: (Number(full['MB/s (changed)']) / (size / 1e6 / rawOut)).toFixed(2) },
    {
      what: `restore (${(restored.bytesToRestore / MiB).toFixed(0)} MiB)`,
      'MB/s': (restored.bytesToRestore / 1e6 / restoreSeconds).toFixed(1),
      'raw copy MB/s': (size / 1e6 / rawBack).toFixed(1),
      ratio: (restored.bytesToRestore / 1e6 / restoreSeconds / (size / 1e6 / rawBack)).toFixed(2),
    },
  ]);
  const fullPuts = Number(full['S3 PUT']);
  const fullWrites = Number(full['DDB writes']);
  const perGiB = GiB / size;
  const wcuPerPack = Math.ceil(packItemBytes / 1024);
  table([
    {
      'per GiB shipped (full backup)': 'requests',
      'S3 PUT': (fullPuts * perGiB).toFixed(0),
      'DDB writes': (fullWrites * perGiB).toFixed(0),
      'pack record bytes': packItemBytes,
      'WCU per pack record': wcuPerPack,
      'USD per GiB (requests)': (fullPuts * perGiB * PRICE.s3PutPerRequest + fullWrites * perGiB * wcuPerPack * PRICE.dynamoWritePerUnit).toFixed(5),
    },
    {
      'per GiB shipped (full backup)': 'restore (DDB: all catalog requests)',
      'S3 PUT': `${(((restoreCounts.requests['VaultS3:GetObject'] ?? 0) * GiB) / restored.bytesToRestore).toFixed(0)} GET`,
      'DDB writes': (((Object.entries(restoreCounts.requests).filter(([k]) => k.startsWith('VaultDynamoDB:')).reduce((n, [, v]) => n + v, 0) - restorePolls) * GiB) / restored.bytesToRestore).toFixed(0),
      'pack record bytes': '',
      'WCU per pack record': '',
      'USD per GiB (requests)': ((((restoreCounts.requests['VaultS3:GetObject'] ?? 0) * GiB) / restored.bytesToRestore) * PRICE.s3GetPerRequest).toFixed(5),
    },
  ]);

  // A parent and 3 clones: vault bytes against 4 independent full copies.
  const parentMiB = 64;
  const parent = (await call(`${api}/volumes`, 'POST', { sizeBytes: parentMiB * MiB })).volumeId as string;
  for (let i = 0; i < parentMiB / 4; i++) await call(`${api}/volumes/${parent}/data?offset=${i * 4 * MiB}`, 'PUT', undefined, randomBytes(4 * MiB));
  const ps = (await call(`${api}/volumes/${parent}/snapshots`, 'POST', {})).snapshotId as string;
  const pb = await call(`${api}/volumes/${parent}/backups`, 'POST', { snapshotId: ps });
  await until(`${api}/backups/${pb.backupId}`, ['complete']);
  let vaultBytes = await vaultObjectBytes(`packs/${pb.backupId}/`);
  for (let c = 0; c < 3; c++) {
    const clone = (await call(`${api}/volumes`, 'POST', { sourceSnapshotId: ps })).volumeId as string;
    const runs = Math.round((parentMiB * MiB * 0.01) / (64 * 1024));
    for (let i = 0; i < runs; i++) await call(`${api}/volumes/${clone}/data?offset=${Math.floor(Math.random() * parentMiB * 16) * 64 * 1024}`, 'PUT', undefined, randomBytes(64 * 1024));
    const cs = (await call(`${api}/volumes/${clone}/snapshots`, 'POST', {})).snapshotId as string;
    const cb = await call(`${api}/volumes/${clone}/backups`, 'POST', { snapshotId: cs });
    await until(`${api}/backups/${cb.backupId}`, ['complete']);
    vaultBytes += await vaultObjectBytes(`packs/${cb.backupId}/`);
  }
  table([
    {
      'parent + 3 clones': `${parentMiB} MiB parent, 1% own blocks per clone`,
      'vault MiB': (vaultBytes / MiB).toFixed(2),
      '4 full copies MiB': 4 * parentMiB,
      ratio: (vaultBytes / (4 * parentMiB * MiB)).toFixed(3),
    },
  ]);
}
