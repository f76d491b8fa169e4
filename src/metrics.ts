/**
 * Metrics: request counters by route and status, rendered with the store's
 * gauges (and a follower's sync figures) in the Prometheus text format.
 */

/** Counts requests; one per server. */
export class Metrics {
  #requests = new Map<string, number>();

  /** Counts one answered request. */
  count(route: string, status: number): void {
    const name = `route="${route}",status="${status}"`;
    this.#requests.set(name, (this.#requests.get(name) ?? 0) + 1);
  }

  /** Requests answered so far on `route` with `status`. */
  requests(route: string, status: number): number {
    return this.#requests.get(`route="${route}",status="${status}"`) ?? 0;
  }

  /** The request counters as Prometheus text. */
  render(): string {
    let text = "# HELP mehdb_http_requests_total HTTP requests answered, by route and status.\n" +
      "# TYPE mehdb_http_requests_total counter\n";
    for (const [labels, value] of [...this.#requests].sort()) {
      text += `mehdb_http_requests_total{${labels}} ${value}\n`;
    }
    return text;
  }
}

/** One Prometheus sample with its help and type lines. */
export function sample(name: string, type: "gauge" | "counter", help: string, value: number, labels = ""): string {
  return `# HELP ${name} ${help}\n# TYPE ${name} ${type}\n${name}${labels ? `{${labels}}` : ""} ${value}\n`;
}
