/**
 * The dispatcher's queue of jobs that wait for a free worker. Free slots go round the owners
 * (requester connections) that wait, so one owner's backlog cannot hold the others back, and a
 * full queue takes a place from the owner holding most of it.
 *
 * @module
 */

import type { SwitchyardError } from "../errors.ts";
import type { Job, Peer } from "./jobs.ts";

/** What the queue needs of the dispatcher to place and fail jobs. */
export interface JobPlacer {
  /** Whether any worker could take a job now. */
  anyRoom(): boolean;
  /** The worker `job` goes to now, if any. */
  choose(job: Job): Peer | undefined;
  /** Sends `job` to `worker` (on failure the job comes back to the queue's front). */
  send(job: Job, worker: Peer): void;
  /** Whether no worker at all offers `job`'s action now. */
  unservable(job: Job): boolean;
  /** `job` has no worker that offers its action: it waits for one a while, or fails. */
  noWorker(job: Job): void;
  /** Fails `job` with `error`. */
  fail(job: Job, error: SwitchyardError): void;
}

/** Jobs waiting for a worker; see the module doc. */
export class JobQueue {
  #jobs: Job[] = [];
  /** Which owner's turn comes first on the next fair pump. */
  #turn = 0;

  /** Jobs waiting. */
  get length(): number {
    return this.#jobs.length;
  }

  /** The waiting jobs, in order (a copy). */
  jobs(): Job[] {
    return [...this.#jobs];
  }

  /** Queues `job` at the back, or at the front for one that has waited already. */
  add(job: Job, front: boolean): void {
    if (front) this.#jobs.unshift(job);
    else this.#jobs.push(job);
  }

  /** Takes `job` out; false when it was not waiting. */
  remove(job: Job): boolean {
    const i = this.#jobs.indexOf(job);
    if (i < 0) return false;
    this.#jobs.splice(i, 1);
    return true;
  }

  /** Takes every waiting job out. */
  clear(): Job[] {
    return this.#jobs.splice(0);
  }

  /** Places waiting jobs on workers that have room, through `placer`. */
  pump(placer: JobPlacer): void {
    if (this.#jobs.length === 0) return;
    const waiting = this.#jobs;
    this.#jobs = [];
    if (severalOwners(waiting)) return this.#pumpFair(waiting, placer);
    for (let i = 0; i < waiting.length; i++) {
      const job = waiting[i];
      if (job.done) continue;
      if (!placer.anyRoom()) {
        this.#jobs.push(...waiting.slice(i).filter((j) => !j.done));
        return;
      }
      const worker = placer.choose(job);
      if (worker) placer.send(job, worker);
      else if (placer.unservable(job)) placer.noWorker(job);
      else this.#jobs.push(job);
    }
  }

  /**
   * Free slots go round the owners that wait, one job each in turn (each owner's own jobs in
   * order, re-sent ones first), so that one owner's backlog cannot hold the others back.
   */
  #pumpFair(waiting: Job[], placer: JobPlacer): void {
    const lanes = new Map<string, Job[]>();
    for (const job of waiting) {
      if (job.done) continue;
      const lane = lanes.get(job.owner);
      if (lane) lane.push(job);
      else lanes.set(job.owner, [job]);
    }
    // Start the turn after the owner served first last time, so no owner is always first.
    const owners = [...lanes.keys()];
    const start = this.#turn++ % owners.length;
    const order = [...owners.slice(start), ...owners.slice(0, start)];
    let placed = true;
    while (placed && placer.anyRoom()) {
      placed = false;
      for (const owner of order) {
        const lane = lanes.get(owner)!;
        while (lane.length > 0) {
          const job = lane.shift()!;
          if (job.done) continue;
          const worker = placer.choose(job);
          if (worker) {
            placer.send(job, worker);
            placed = true;
            break;
          }
          if (placer.unservable(job)) {
            placer.noWorker(job);
            continue;
          }
          // No worker for this one now (the action's workers are busy): it keeps its place.
        }
        if (!placer.anyRoom()) break;
      }
    }
    // What is left keeps its order; a job a failed send put back is there already.
    const back = new Set(this.#jobs);
    for (const job of waiting) {
      if (!job.done && job.worker === undefined && !back.has(job)) {
        this.#jobs.push(job);
      }
    }
  }

  /**
   * The queue is full: an owner holding fewer queued jobs than the one holding most takes the
   * newest place of that one, whose job fails with `error`. Returns whether room was made.
   */
  makeRoomFor(
    owner: string,
    placer: JobPlacer,
    error: () => SwitchyardError,
  ): boolean {
    const counts = new Map<string, number>();
    for (const job of this.#jobs) {
      counts.set(job.owner, (counts.get(job.owner) ?? 0) + 1);
    }
    let heaviest = "";
    let most = 0;
    for (const [o, n] of counts) {
      if (n > most) {
        most = n;
        heaviest = o;
      }
    }
    if (heaviest === owner || (counts.get(owner) ?? 0) + 1 >= most) {
      return false;
    }
    for (let i = this.#jobs.length - 1; i >= 0; i--) {
      const job = this.#jobs[i];
      if (job.owner !== heaviest) continue;
      placer.fail(job, error());
      return true;
    }
    return false;
  }
}

function severalOwners(jobs: readonly Job[]): boolean {
  const first = jobs[0].owner;
  for (let i = 1; i < jobs.length; i++) {
    if (jobs[i].owner !== first) return true;
  }
  return false;
}
