/**
 * What the domain needs from AWS, as small interfaces (ports). The SDK adapters that implement
 * them live in shared/aws/; the domain reaches them through shared/ports.ts and never builds an
 * SDK command itself. Each method says what it guarantees, not how the service is asked.
 */
import type { ChunkLocation, ListedChunk, VolumeChunk } from '../data/sleds.ts';
import type { WorkMessage } from './work-messages.ts';

/** Chunk objects (and other objects, such as dumps) on the sleds. A missing object reads as null. */
export interface ChunkStore {
  /** Writes a chunk that must not exist yet (`If-None-Match: *`), with a CRC32C the store verifies. */
  putChunk(loc: ChunkLocation, body: Buffer, crc32c: number): Promise<void>;
  /** Whether the object at `loc` is exactly `body` (its CRC32C `crc32c`); false when it is missing. */
  storedChunkEquals(loc: ChunkLocation, body: Buffer, crc32c: number): Promise<boolean>;
  /** Bytes `[start, end)` of a chunk, or null if it does not exist. */
  getChunkRange(loc: ChunkLocation, start: number, end: number): Promise<Buffer | null>;
  /** The last `bytes` bytes of a chunk (all of it if shorter), or null if it does not exist. */
  getChunkTail(loc: ChunkLocation, bytes: number): Promise<Buffer | null>;
  /** A whole chunk, or null if it does not exist. */
  getChunk(loc: ChunkLocation): Promise<Buffer | null>;
  /** Deletes a chunk; deleting a missing chunk succeeds. */
  deleteChunk(loc: ChunkLocation): Promise<void>;
  /** Deletes a chunk if it exists; true if it did. */
  deleteChunkIfPresent(loc: ChunkLocation): Promise<boolean>;
  /** Every chunk object of a volume on every sled and drive. */
  listVolumeChunks(volumeId: string, buckets: readonly string[]): AsyncGenerator<ListedChunk>;
  /** One page of the objects on a drive after the key `startAfter`; `next` continues it. */
  listDrivePage(bucket: string, drive: string, startAfter: string, maxKeys: number): Promise<{ objects: ListedChunk[]; next?: string }>;
  /** The chunk objects of a volume whose object id starts with `namePrefix` and sorts after `startAfterName`. */
  listChunks(volumeId: string, buckets: readonly string[], opts?: { namePrefix?: string; startAfterName?: string }): Promise<VolumeChunk[]>;
  /** Whether an error is the store's answer to a write of a chunk that already exists. */
  isPreconditionFailed(err: unknown): boolean;
  /** Writes any object (dumps), optionally only if it does not exist yet. */
  putObject(loc: ChunkLocation, body: Buffer, opts?: { contentType?: string; ifAbsent?: boolean }): Promise<void>;
  /** A whole object; a missing one is an error. */
  readObject(loc: ChunkLocation): Promise<Buffer>;
}

/** A message as received from a queue (dead letters): what is shown, moved back, or released. */
export interface QueuedMessage {
  messageId: string;
  body: string;
  /** Identifies this receive; needed to release or delete it. */
  receiptHandle: string;
  /** The queue's own attributes of the message (`ApproximateReceiveCount`, `SentTimestamp`...). */
  attributes: Record<string, string>;
  /** The sender's message attributes, carried as they are when the message is moved back. */
  messageAttributes?: unknown;
}

/**
 * The work queues. A message goes to the queue its type belongs to (`queueOf` in
 * shared/core/work-messages.ts); every body is the message's JSON.
 */
export interface WorkQueue {
  /** Puts one message on its queue, visible after `delaySeconds` when given (0 to 900). */
  send(message: WorkMessage, opts?: { delaySeconds?: number }): Promise<void>;
  /** Puts up to 10 messages of one queue in one request; returns the ones not accepted. */
  sendBatch(messages: readonly WorkMessage[]): Promise<Array<{ code?: string; message?: string }>>;
  /** About how many messages a queue holds, visible or not. */
  approximateCount(queueUrl: string): Promise<number>;
  /** Receives up to 10 messages, each hidden from other receivers for `holdSeconds`. */
  receive(queueUrl: string, max: number, holdSeconds: number): Promise<QueuedMessage[]>;
  /** Makes up to 10 received messages visible again at once. */
  release(queueUrl: string, messages: readonly QueuedMessage[]): Promise<void>;
  /** Sends a received message's body and attributes, unchanged, to another queue. */
  resend(queueUrl: string, message: QueuedMessage): Promise<void>;
  /** Deletes a received message. */
  delete(queueUrl: string, message: QueuedMessage): Promise<void>;
}

/** Every port, as bound in shared/ports.ts. */
export interface Ports {
  chunks: ChunkStore;
  queue: WorkQueue;
}
