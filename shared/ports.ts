/**
 * The ports of shared/core/ports.ts bound to their AWS adapters (shared/aws/). Domain modules
 * take their stores from here. `bindPorts` replaces some of them (tests, other backends) and
 * returns a function that restores the previous binding.
 */
import { s3ChunkStore } from './aws/chunk-store.ts';
import { dynamoDriveRegistry } from './aws/drive-registry.ts';
import { dynamoPageMap } from './aws/pagemap/index.ts';
import { dynamoGroupStore } from './aws/pagemap/groups.ts';
import type { GroupStore } from './core/groups.ts';
import { sqsWorkQueue } from './aws/work-queue.ts';
import { dynamoNotes } from './aws/notes.ts';
import type { ChunkStore, DriveRegistry, NoteStore, PageMapStore, Ports, WorkQueue } from './core/ports.ts';

const bound: Ports = { pageMap: dynamoPageMap, drives: dynamoDriveRegistry, chunks: s3ChunkStore, queue: sqsWorkQueue };

/** The page map (DynamoDB). */
export function pageMap(): PageMapStore {
  return bound.pageMap;
}

/** Consistency groups and their snapshots (DynamoDB; docs/consistency-groups.md). */
export function groupStore(): GroupStore {
  return dynamoGroupStore;
}

/** Notes at the primary: backup job records and work failure notes (DynamoDB; docs/backup.md). */
export function notes(): NoteStore {
  return dynamoNotes;
}

/** The chunk store (S3 sleds). */
export function chunkStore(): ChunkStore {
  return bound.chunks;
}

/** The drive registry (DynamoDB). */
export function driveRegistry(): DriveRegistry {
  return bound.drives;
}

/** The work queues (SQS). */
export function workQueue(): WorkQueue {
  return bound.queue;
}

export function bindPorts(ports: Partial<Ports>): () => void {
  const previous = { ...bound };
  Object.assign(bound, ports);
  return () => void Object.assign(bound, previous);
}
