import { type Schedule, schedules } from '../functions/schedules/schedules.ts';
import { invokeHandler } from './lambda.ts';

/** The schedules CDK deploys, fired by timers: once at start (to catch up), then at their rate; never overlapping. */

export function rateMs(expression: string): number {
  const match = /^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$/.exec(expression);
  if (!match) throw new Error(`unsupported schedule expression "${expression}" (the local runtime runs rate(...) only)`);
  const unit = { minute: 60_000, hour: 3_600_000, day: 86_400_000 }[match[2].replace(/s$/, '') as 'minute' | 'hour' | 'day'];
  return Number(match[1]) * unit;
}

export function startSchedules(options: { onError: (schedule: Schedule, error: unknown) => void; speedup?: number }) {
  const running = new Map<string, Promise<unknown>>();
  const fire = (schedule: Schedule, time = new Date()): Promise<unknown> => {
    const current = running.get(schedule.id);
    if (current) return current;
    const run = invokeHandler(schedule.entry, schedule.handler, { source: 'aws.events', 'detail-type': 'Scheduled Event', time: time.toISOString() })
      .catch((error) => options.onError(schedule, error))
      .finally(() => running.delete(schedule.id));
    running.set(schedule.id, run);
    return run;
  };
  const timers = schedules.map((schedule) => setInterval(() => void fire(schedule), rateMs(schedule.expression) / (options.speedup ?? 1)));
  return {
    /** Fires a schedule now (and waits for it), e.g. at start-up; `time` is the instant its event says it fired. */
    fire: (id: string, time?: Date) => fire(schedules.find((s) => s.id === id)!, time),
    async stop(): Promise<void> {
      timers.forEach(clearInterval);
      await Promise.all(running.values());
    },
  };
}
