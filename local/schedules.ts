/**
 * A local stand-in for the stack's EventBridge schedules: each rule's message is sent to its
 * target queue at the rule's rate, where the worker takes it like any other work message, as
 * on AWS. The first run comes one interval after start (EventBridge's first run of a rate rule
 * also comes within one interval of its creation). A failed send is retried up to the target's
 * `MaximumRetryAttempts` times, then reported and dropped, as EventBridge drops an event it
 * cannot deliver when the rule has no dead-letter queue.
 */
import { SendMessageCommand, type SQSClient } from '@aws-sdk/client-sqs';
import { backoffMs } from './sqs-poller.ts';
import type { ScheduleSettings } from './stack-settings.ts';

export interface Scheduler {
  /** Stops the timers and waits for sends in progress. Idempotent. */
  stop(): Promise<void>;
}

/** The longest delay a Node timer takes (about 24.8 days). */
const TIMER_MAX_MS = 2 ** 31 - 1;

export function startSchedules(rules: ScheduleSettings[], opts: { sqs: SQSClient; onError: (err: unknown) => void }): Scheduler {
  for (const rule of rules) {
    if (rule.intervalMs > TIMER_MAX_MS) throw new RangeError(`schedule ${rule.ruleLogicalId}: ${rule.expression} is longer than the local scheduler's timers allow`);
  }
  const pending = new Set<Promise<void>>();
  let stopped = false;

  async function deliver(rule: ScheduleSettings, target: ScheduleSettings['targets'][number]): Promise<void> {
    for (let attempt = 0; !stopped; attempt++) {
      try {
        await opts.sqs.send(new SendMessageCommand({ QueueUrl: target.queueUrl, MessageBody: target.input }));
        return;
      } catch (err) {
        if (attempt >= target.maximumRetryAttempts) {
          opts.onError(new Error(`schedule ${rule.ruleLogicalId} (${rule.expression}) could not send to ${target.queueLogicalId}: ${String(err)}`));
          return;
        }
        await new Promise((resolve) => setTimeout(resolve, backoffMs(attempt + 1)));
      }
    }
  }

  const timers = rules.map((rule) =>
    setInterval(() => {
      for (const target of rule.targets) {
        const sending = deliver(rule, target).finally(() => pending.delete(sending));
        pending.add(sending);
      }
    }, rule.intervalMs),
  );
  for (const timer of timers) timer.unref();

  return {
    async stop() {
      stopped = true;
      for (const timer of timers) clearInterval(timer);
      await Promise.all(pending);
    },
  };
}
