/**
 * Failure notes (docs/backup.md, "Failure notes"): the worker's last failure of each work
 * message, kept at the primary under a key computed from the message itself, so the dead-letter
 * peek can show why a message is there however SQS moved it.
 */
import { createHash } from 'node:crypto';
import type { NoteKey } from '../core/ports.ts';
import { parseWorkMessage } from '../core/work-messages.ts';
import { notes } from '../ports.ts';

const REASON_MAX = 1024;

/** The note's key: a hash of the parsed message's JSON (so equal messages share it), or of the raw body when it does not parse. */
export function failureNoteKey(body: string): NoteKey {
  let canonical = body;
  try {
    canonical = JSON.stringify(parseWorkMessage(body));
  } catch {
    // a body that is not a work message is keyed as it is
  }
  return { partition: `failure#${createHash('sha256').update(canonical).digest('hex').slice(0, 32)}`, sort: '#note' };
}

export interface FailureNote {
  reason: string;
  receiveCount: number;
  queue: string;
  failedAt: string;
}

export function failureReason(err: unknown): string {
  const text = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  return text.length > REASON_MAX ? `${text.slice(0, REASON_MAX - 3)}...` : text;
}

/** Records why `body` failed on its `receiveCount`th receive (best effort: the log has it too). */
export async function recordFailure(body: string, queue: string, receiveCount: number, err: unknown): Promise<void> {
  const note: FailureNote = { reason: failureReason(err), receiveCount, queue, failedAt: new Date().toISOString() };
  await notes().put(failureNoteKey(body), { ...note });
}

/** Forgets an earlier failure of a message that has now succeeded. */
export async function clearFailure(body: string): Promise<void> {
  await notes().delete(failureNoteKey(body));
}

/** The notes of several message bodies, by body. */
export async function failureNotes(bodies: readonly string[]): Promise<Map<string, FailureNote>> {
  const keys = bodies.map(failureNoteKey);
  const found = await notes().getMany(keys);
  const out = new Map<string, FailureNote>();
  bodies.forEach((body, i) => {
    const note = found.get(`${keys[i]!.partition}\n${keys[i]!.sort}`);
    if (note) out.set(body, note as unknown as FailureNote);
  });
  return out;
}
