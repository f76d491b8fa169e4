/**
 * Metrics: request counters by route and status, rendered with the store's
 * gauges (and a follower's sync figures) in the Prometheus text format.
 */

/** Counts requests; one per server. */
export class Metrics {
  /** route → status → count; no string is built per request. */
  #requests = new Map<string, Map<number, number>>();

  /** Counts one answered request. */
  count(route: string, status: number): void {
    let byStatus = this.#requests.get(route);
    if (!byStatus) this.#requests.set(route, (byStatus = new Map()));
    byStatus.set(status, (byStatus.get(status) ?? 0) + 1);
  }

  /** The request counters as Prometheus text. */
  render(): string {
    let text =
      "# HELP mehdb_http_requests_total HTTP requests answered, by route and status.\n" +
      "# TYPE mehdb_http_requests_total counter\n";
    for (const [route, byStatus] of [...this.#requests].sort(([a], [b]) => (a < b ? -1 : 1))) {
      for (const [status, count] of [...byStatus].sort(([a], [b]) => a - b)) {
        text += `mehdb_http_requests_total{route="${route}",status="${status}"} ${count}\n`;
      }
    }
    return text;
  }
}

/** One Prometheus sample with its help and type lines. */
export function sample(name: string, type: "gauge" | "counter", help: string, value: number, labels = ""): string {
  return `# HELP ${name} ${help}\n# TYPE ${name} ${type}\n${name}${labels ? `{${labels}}` : ""} ${value}\n`;
}
