/**
 * What the API shows of a drive and of its evacuation: progress, rates and ETA (pure).
 */
import { invariant } from '../core/errors.ts';
import { DriveRecord, DriveState, EvacuationCounters, EvacuationState } from '../core/drive-records.ts';

export interface EvacuationProgress extends EvacuationCounters {
  run: string;
  reason: string;
  state: 'running' | 'complete';
  pass: number;
  chunksRemaining: number;
  bytesRemaining: number;
  /** Moved bytes and chunks per second since the run started (0 before anything moved). */
  bytesPerSecond: number;
  chunksPerSecond: number;
  /** Seconds to go at the current rate; null when nothing has moved yet. */
  etaSeconds: number | null;
  fractionDone: number;
  startedAt: string;
  completedAt?: string;
}

/**
 * What the API shows of an evacuation. Totals come from the first pass's listing and rise if a
 * later pass finds more; remaining never goes below zero and is zero once the drive is retired.
 */
export function evacuationProgress(e: EvacuationState, driveState: DriveState, nowMs: number): EvacuationProgress {
  invariant(e.startedAtMs > 0, 'an evacuation has a start time');
  const complete = driveState === 'retired' && e.completedAtMs !== undefined;
  const done = e.chunksMoved + e.chunksDropped;
  const doneBytes = e.bytesMoved + e.bytesDropped;
  const chunksTotal = Math.max(e.chunksTotal, done);
  const bytesTotal = Math.max(e.bytesTotal, doneBytes);
  const chunksRemaining = complete ? 0 : Math.max(0, chunksTotal - done);
  const bytesRemaining = complete ? 0 : Math.max(0, bytesTotal - doneBytes);
  const endMs = complete ? e.completedAtMs! : Math.max(e.lastProgressAtMs, nowMs);
  const seconds = Math.max(0.001, (endMs - e.startedAtMs) / 1000);
  const bytesPerSecond = e.bytesMoved / seconds;
  const chunksPerSecond = e.chunksMoved / seconds;
  // The ETA uses every byte taken off the drive (moved or dropped), the rate the drive empties at.
  const emptyingBytesPerSecond = doneBytes / seconds;
  const etaSeconds = complete ? 0 : emptyingBytesPerSecond > 0 ? bytesRemaining / emptyingBytesPerSecond : null;
  const out: EvacuationProgress = {
    run: e.run,
    reason: e.reason,
    state: complete ? 'complete' : 'running',
    pass: e.pass,
    chunksTotal,
    bytesTotal,
    chunksMoved: e.chunksMoved,
    bytesMoved: e.bytesMoved,
    chunksRebuilt: e.chunksRebuilt,
    chunksDropped: e.chunksDropped,
    bytesDropped: e.bytesDropped,
    chunksRemaining,
    bytesRemaining,
    unmanagedObjects: e.unmanagedObjects,
    bytesPerSecond: Math.round(bytesPerSecond),
    chunksPerSecond: Math.round(chunksPerSecond * 100) / 100,
    etaSeconds: etaSeconds === null ? null : Math.ceil(etaSeconds),
    fractionDone: complete ? 1 : chunksTotal === 0 ? 0 : Math.min(1, done / chunksTotal),
    startedAt: new Date(e.startedAtMs).toISOString(),
  };
  if (e.completedAtMs !== undefined) out.completedAt = new Date(e.completedAtMs).toISOString();
  return out;
}

/** A drive as the API shows it: the registry item, with evacuation progress when there is one. */
export function driveView(d: DriveRecord, nowMs = Date.now()): Record<string, unknown> {
  const { evacuation, ...rest } = d;
  return evacuation ? { ...rest, evacuation: evacuationProgress(evacuation, d.state, nowMs) } : rest;
}
