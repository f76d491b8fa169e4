/**
 * Watching changes, the parts that need no HTTP: the `wait` and `prefix`
 * parameters of `GET /keys`, and the bounded set of held
 * `GET /keys?since=…&wait=MS` answers ({@link Watches}) with their figures.
 */
import { isValidKey } from "../keys.ts";
import { metric } from "../metrics.ts";
import type { Changes } from "../protocol.ts";

/** Longest `wait` of `GET /keys?since=…&wait=MS`, in milliseconds. */
export const MAX_WAIT_MS = 60_000;

/** Held `/keys` answers at once, by default; past it a watch with nothing new is answered `503`. */
export const MAX_HELD = 256;

/** Reads `wait`: a whole number of milliseconds from 1 to {@link MAX_WAIT_MS}; `null` otherwise. */
export function parseWait(text: string): number | null {
  if (!/^[0-9]{1,6}$/.test(text)) return null;
  const ms = Number(text);
  return ms >= 1 && ms <= MAX_WAIT_MS ? ms : null;
}

/** True when `prefix` may be asked for: empty, or made and started like a key (anything else matches no key). */
export function isValidPrefix(prefix: string): boolean {
  return prefix === "" || isValidKey(prefix);
}

/** `changes` with only the names that start with `prefix`; the cursor stays. */
export function changesWithPrefix(changes: Changes, prefix: string): Changes {
  if (prefix === "") return changes;
  return {
    ...changes,
    keys: changes.keys.filter(([name]) => name.startsWith(prefix)),
    deleted: changes.deleted.filter((name) => name.startsWith(prefix)),
  };
}

/** True when `changes` has nothing to tell: not a full listing, nothing written, nothing deleted. */
export function nothingChanged(changes: Changes): boolean {
  return !changes.full && changes.keys.length === 0 && changes.deleted.length === 0;
}

/** Why a held answer was let go. */
export type Wake = "change" | "timeout" | "closed" | "gone";

/** Options of {@link Watches}. */
export interface WatchesOptions {
  /** Answers held at once. Default {@link MAX_HELD} (the server's; a test sets a smaller one). */
  max?: number;
}

/**
 * The held `/keys` answers: each waits for the store's next change, its own
 * time limit, its client going away, or {@link Watches.close} (shutdown), and
 * their number is bounded.
 */
export class Watches {
  /** Answers held at once, at most. */
  readonly max: number;
  #nextChange: () => Promise<void>;
  #waiters = new Set<(wake: Wake) => void>();
  #listening = false;
  #closed = false;
  #refused = 0;

  /** `nextChange` resolves at the store's next change (see `Store.nextChange`). */
  constructor(nextChange: () => Promise<void>, options: WatchesOptions = {}) {
    this.#nextChange = nextChange;
    this.max = options.max ?? MAX_HELD;
  }

  /** Answers held now. */
  get held(): number {
    return this.#waiters.size;
  }

  /** Watches refused (`503`) because {@link Watches.max} were already held. */
  get refused(): number {
    return this.#refused;
  }

  /**
   * Holds until the next change, `ms` pass, `signal` aborts (the client went
   * away) or {@link Watches.close}; resolves with the reason. `null` when
   * {@link Watches.max} answers are held already: the caller refuses it.
   */
  hold(ms: number, signal?: AbortSignal): Promise<Wake> | null {
    if (this.#closed) return Promise.resolve("closed");
    if (signal?.aborted) return Promise.resolve("gone");
    if (this.#waiters.size >= this.max) {
      this.#refused++;
      return null;
    }
    return new Promise<Wake>((resolve) => {
      const onAbort = () => finish("gone");
      const finish = (wake: Wake) => {
        if (!this.#waiters.delete(finish)) return;
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        resolve(wake);
      };
      const timer = setTimeout(finish, ms, "timeout");
      this.#waiters.add(finish);
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#listen();
    });
  }

  /** Lets every held answer go at once, and holds none from now on (shutdown). */
  close(): void {
    this.#closed = true;
    this.#wakeAll("closed");
  }

  /** The watch figures, Prometheus text. */
  metrics(): string {
    return (
      metric("mehdb_watches_held", "gauge", "GET /keys?since=...&wait=... answers held now.", this.held) +
      metric(
        "mehdb_watches_unheld_total",
        "counter",
        `Watches with nothing new refused with 503 because ${this.max} were held already.`,
        this.#refused,
      )
    );
  }

  #listen(): void {
    if (this.#listening) return;
    this.#listening = true;
    void this.#nextChange().then(() => {
      this.#listening = false;
      this.#wakeAll("change");
    });
  }

  #wakeAll(wake: Wake): void {
    for (const finish of [...this.#waiters]) finish(wake);
  }
}
