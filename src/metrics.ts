/**
 * Metrics: request counters by route and status, and {@link metric}, the one
 * way a metric is rendered in the Prometheus text format (the store's gauges,
 * a follower's sync figures, a leader's per-follower gauges).
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
    const samples: Sample[] = [];
    for (const [route, byStatus] of [...this.#requests].sort(([a], [b]) => (a < b ? -1 : 1))) {
      for (const [status, value] of [...byStatus].sort(([a], [b]) => a - b)) {
        samples.push({ labels: { route, status }, value });
      }
    }
    return metric("mehdb_http_requests_total", "counter", "HTTP requests answered, by route and status.", samples);
  }
}

/** One line of a metric: its labels (none when the metric has one line) and its value. */
export interface Sample {
  labels?: Record<string, string | number>;
  value: number;
}

/**
 * A metric in the Prometheus text format: its help and type lines, then one line per sample (none is fine); a
 * number is the one sample of a metric without labels. Label values are escaped.
 */
export function metric(name: string, type: "gauge" | "counter", help: string, samples: number | Sample[]): string {
  let text = `# HELP ${name} ${help}\n# TYPE ${name} ${type}\n`;
  for (const { labels, value } of typeof samples === "number" ? [{ value: samples }] : samples) {
    const pairs = labels && Object.entries(labels).map(([label, v]) => `${label}="${labelValue(String(v))}"`);
    text += `${name}${pairs ? `{${pairs.join(",")}}` : ""} ${value}\n`;
  }
  return text;
}

/** A Prometheus label value, escaped. */
function labelValue(text: string): string {
  return text.replace(/[\\"\n]/g, (c) => (c === "\n" ? "\\n" : `\\${c}`));
}
