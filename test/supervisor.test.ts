import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { supervise, type Supervisor } from '../agent/supervisor.ts';

/** A supervisor of a real process (`sleep`) that is ready, or fails provisioning, when the test says so. */
function gatedServer() {
  let open!: () => void;
  let refuse!: (error: Error) => void;
  const gate = new Promise<void>((resolve, reject) => { open = resolve; refuse = reject; });
  const supervisor = supervise('test', {
    prepare: async () => undefined,
    spawn: () => spawn('sleep', ['30'], { stdio: ['ignore', 'ignore', 'pipe'] }),
    becomeReady: () => gate,
  });
  return { supervisor, open, refuse };
}

let started: Supervisor | undefined;
afterEach(async () => {
  await started?.stop();
  started = undefined;
});

describe('supervisor.whenSettled', () => {
  it('answers once the server is ready, not before', async () => {
    const { supervisor, open } = gatedServer();
    started = supervisor;
    supervisor.start();
    let settled: { status: string } | undefined;
    void supervisor.whenSettled().then((state) => { settled = state; });
    await sleep(200);
    expect(settled).toBeUndefined();
    expect(supervisor.state().status).toBe('starting');

    open();
    expect(await supervisor.whenSettled()).toEqual({ status: 'running' });
    expect(settled).toEqual({ status: 'running' });
  });

  it('answers with the reason when provisioning fails', async () => {
    const { supervisor, refuse } = gatedServer();
    started = supervisor;
    supervisor.start();
    const settled = supervisor.whenSettled();
    refuse(new Error('role missing'));
    expect(await settled).toEqual({ status: 'failed', reason: 'provisioning failed: role missing' });
  });
});
