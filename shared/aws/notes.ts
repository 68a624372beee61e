/**
 * Notes at the primary (docs/backup.md, "Poison jobs and an unreachable vault"): small JSON
 * documents in the Snapshots table under keys that are never volume or group ids (a backup's
 * job record under its backup id, a work message's failure note under `failure#<hash>`), so
 * they share the table without a new one or new grants. Nothing scans that table.
 */
import { type AttributeValue, DeleteItemCommand, GetItemCommand, PutItemCommand } from '@aws-sdk/client-dynamodb';
import { config } from '../core/config.ts';
import type { NoteKey, NoteStore } from '../core/ports.ts';
import { dynamo } from './clients.ts';
import { batchGet } from './pagemap/pages.ts';

function noteItemKey(k: NoteKey): Record<string, AttributeValue> {
  return { volumeId: { S: k.partition }, snapshotId: { S: k.sort } };
}

async function getNote(k: NoteKey): Promise<Record<string, unknown> | null> {
  const out = await dynamo().send(new GetItemCommand({ TableName: config().snapshotsTable, Key: noteItemKey(k), ConsistentRead: true }));
  return out.Item?.doc?.S ? (JSON.parse(out.Item.doc.S) as Record<string, unknown>) : null;
}

async function getNotes(keys: readonly NoteKey[]): Promise<Map<string, Record<string, unknown>>> {
  const out = new Map<string, Record<string, unknown>>();
  const unique = [...new Map(keys.map((k) => [`${k.partition}\n${k.sort}`, k])).values()];
  if (unique.length === 0) return out;
  for (const item of await batchGet(config().snapshotsTable, unique.map(noteItemKey))) {
    if (item.doc?.S) out.set(`${item.volumeId!.S}\n${item.snapshotId!.S}`, JSON.parse(item.doc.S) as Record<string, unknown>);
  }
  return out;
}

/**
 * How long a note is kept after its last write: DynamoDB's time to live deletes it then (the
 * table's TTL attribute is `expiresAt`, cdk/stack.ts). Ninety days is far beyond what reads a
 * note: SQS keeps a message (and a dead letter) 14 days at most, and a backup whose job record is
 * gone is shown as the vault has it (a stale `running` record may be deleted; docs/backup.md).
 */
export const NOTE_TTL_SECONDS = 90 * 24 * 3600;

async function putNote(k: NoteKey, doc: Record<string, unknown>): Promise<void> {
  const expiresAt = Math.floor(Date.now() / 1000) + NOTE_TTL_SECONDS;
  await dynamo().send(
    new PutItemCommand({
      TableName: config().snapshotsTable,
      Item: { ...noteItemKey(k), doc: { S: JSON.stringify(doc) }, expiresAt: { N: String(expiresAt) } },
    }),
  );
}

async function deleteNote(k: NoteKey): Promise<void> {
  await dynamo().send(new DeleteItemCommand({ TableName: config().snapshotsTable, Key: noteItemKey(k) }));
}

/** The note port (shared/core/ports.ts) on DynamoDB. */
export const dynamoNotes: NoteStore = { get: getNote, getMany: getNotes, put: putNote, delete: deleteNote };
