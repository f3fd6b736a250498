import type { ChildProcess } from 'node:child_process';
import type { Instance } from '#core/agent-api.ts';
import { errorMessage, log } from './log.ts';

export type ServerStatus = Instance['status'];

/** How to bring one server up; the supervisor decides when. */
export interface ServerLifecycle {
  /** Runs before every start (cleanup, initdb, config). A failure here is not retried: the server ends `failed`. */
  prepare(): Promise<void>;
  spawn(): ChildProcess;
  /**
   * Resolves once the server accepts connections and is provisioned. Polls while `current()` is true;
   * it turns false when this process exited or was superseded by a stop or restart.
   */
  becomeReady(current: () => boolean): Promise<void>;
}

export interface Supervisor {
  state(): { status: ServerStatus; reason?: string };
  /** The state once it is `running` or `failed`: at once if it is, else at the next change to either. */
  whenSettled(): Promise<{ status: ServerStatus; reason?: string }>;
  /** Starts a stopped or failed server afresh (forgetting past crashes); a no-op while it runs or starts. */
  start(): void;
  /** Runs provisioning again on the running server (e.g. the role's password changed). */
  reprovision(): void;
  /**
   * Fast shutdown; waits for the postmaster to exit. With `smartMs`, a smart shutdown first: sessions
   * may finish what they are doing for that long (no new ones get in), then the fast one ends the rest.
   */
  stop(options?: { smartMs?: number }): Promise<void>;
}

const crashWindowMs = 60_000;
const maxCrashes = 5;
const stopTimeoutMs = 30_000;

/**
 * Keeps one server up: restarts it with a growing backoff when it exits on its own, and gives up
 * (`failed`, with the reason) after too many crashes in a minute. Every start, stop or restart bumps
 * `generation`, so work belonging to an older generation notices and drops out.
 */
export function supervise(name: string, lifecycle: ServerLifecycle): Supervisor {
  let status: ServerStatus = 'stopped';
  let reason: string | undefined;
  let generation = 0;
  let child: ChildProcess | undefined;
  let exited: Promise<unknown> = Promise.resolve();
  let preparing: Promise<unknown> = Promise.resolve();
  let retryTimer: NodeJS.Timeout | undefined;
  let crashes: number[] = [];
  let provisioning = 0;
  /** Callers of whenSettled, woken by the next change to `running` or `failed`. */
  let waiters: (() => void)[] = [];

  const state = () => (reason === undefined ? { status } : { status, reason });
  const isSettled = () => status === 'running' || status === 'failed';

  function settle(to: 'running' | 'failed', why?: string): void {
    status = to;
    reason = why;
    const woken = waiters;
    waiters = [];
    woken.forEach((wake) => wake());
  }

  function fail(why: string): void {
    settle('failed', why);
    log('error', 'server failed', { instance: name, reason: why });
  }

  async function launch(gen: number): Promise<void> {
    status = 'starting';
    reason = undefined;
    const prepared = lifecycle.prepare();
    preparing = prepared.catch(() => undefined);
    try {
      await prepared;
    } catch (error) {
      if (gen === generation) fail(errorMessage(error));
      return;
    }
    if (gen !== generation) return;

    let proc: ChildProcess;
    try {
      proc = lifecycle.spawn();
    } catch (error) {
      fail(`could not start postgres: ${errorMessage(error)}`);
      return;
    }
    child = proc;
    // Only what the server says before it is ready matters here: later its log collector takes stderr over.
    let stderrTail = '';
    proc.stderr?.setEncoding('utf8').on('data', (chunk: string) => { stderrTail = (stderrTail + chunk).slice(-1000); });
    exited = new Promise<string>((resolve) => {
      // 'error' alone is emitted when the binary cannot be spawned at all; 'exit' otherwise.
      proc.once('error', (error) => resolve(`could not start postgres: ${error.message}`));
      proc.once('exit', (code, signal) => resolve(describeExit(code, signal, stderrTail)));
    }).then((description) => {
      if (child === proc) child = undefined;
      if (gen === generation) crashed(description);
    });
    log('info', 'server started', { instance: name, pid: proc.pid });

    const current = () => gen === generation && child === proc && proc.exitCode === null && proc.signalCode === null;
    try {
      await lifecycle.becomeReady(current);
      if (current()) {
        settle('running');
        stderrTail = '';
        log('info', 'server ready', { instance: name, pid: proc.pid });
      }
    } catch (error) {
      if (current()) provisioningFailed(proc, error);
    }
  }

  /** A server nobody can log in to is of no use: stop it and say why. */
  function provisioningFailed(proc: ChildProcess, error: unknown): void {
    generation++;
    fail(`provisioning failed: ${errorMessage(error)}`);
    proc.kill('SIGINT');
  }

  function crashed(description: string): void {
    const now = Date.now();
    crashes = [...crashes.filter((t) => now - t < crashWindowMs), now];
    if (crashes.length >= maxCrashes) {
      fail(`postgres exited ${crashes.length} times within a minute; last: ${description}`);
      return;
    }
    status = 'starting';
    const delay = 200 * 2 ** (crashes.length - 1);
    log('warn', 'server exited; restarting', { instance: name, exit: description, delayMs: delay });
    const gen = generation;
    retryTimer = setTimeout(() => void launch(gen), delay);
  }

  return {
    state,

    whenSettled: () => (isSettled() ? Promise.resolve(state()) : new Promise((resolve) => waiters.push(() => resolve(state())))),

    start() {
      if (status === 'starting' || status === 'running') return;
      crashes = [];
      void launch(++generation);
    },

    reprovision() {
      const proc = child;
      if (status !== 'running' || !proc) return;
      // Not a new generation: a crash during provisioning must still count as a crash of this process.
      const gen = generation;
      const round = ++provisioning;
      status = 'starting';
      const current = () => round === provisioning && gen === generation && child === proc && proc.exitCode === null && proc.signalCode === null;
      lifecycle.becomeReady(current).then(
        () => { if (current()) settle('running'); },
        (error: unknown) => { if (current()) provisioningFailed(proc, error); },
      );
    },

    async stop({ smartMs = 0 } = {}) {
      generation++;
      clearTimeout(retryTimer);
      await preparing;
      const proc = child;
      if (proc) {
        const timers = [setTimeout(() => proc.kill('SIGKILL'), stopTimeoutMs)];
        if (smartMs > 0) {
          proc.kill('SIGTERM');
          timers.push(setTimeout(() => proc.kill('SIGINT'), smartMs));
        } else {
          proc.kill('SIGINT');
        }
        await exited;
        timers.forEach(clearTimeout);
      }
      status = 'stopped';
      reason = undefined;
    },
  };
}

function describeExit(code: number | null, signal: NodeJS.Signals | null, stderrTail: string): string {
  const how = signal ? `killed by ${signal}` : `exit code ${code}`;
  // The FATAL line alone often just says "contains errors"; the lines before it say which.
  const said = stderrTail.trim().split('\n').filter(Boolean).slice(-3)
    .map((line) => line.replace(/^\S+ \S+ \S+ \[\d+\] /, '').replace(/\s+/g, ' ')).join(' / ');
  return said ? `${how}: ${said}` : how;
}
