/**
 * Test helpers for comparing what mehdb processes hold: every key and its
 * bytes, read over HTTP or straight from a data directory.
 */
import { randomBytes } from "node:crypto";
import { readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fetchText } from "./mehdb.ts";

/** Keys and their values. */
export type Data = Map<string, Buffer>;

/** Every key and value a server lists (`GET /keys`, then `GET /get/KEY` each). */
export async function httpData(url: string): Promise<Data> {
  const keys = await fetchText(`${url}/keys`);
  if (keys.status !== 200) throw new Error(`GET ${url}/keys answered ${keys.status}`);
  const data: Data = new Map();
  for (const key of JSON.parse(keys.text) as string[]) {
    const value = await fetchText(`${url}/get/${encodeURIComponent(key)}`);
    if (value.status !== 200) throw new Error(`GET ${url}/get/${key} answered ${value.status}`);
    data.set(key, value.body);
  }
  return data;
}

/** Every key file in a data directory (names not starting with `.`) and its bytes. */
export async function dirData(dir: string): Promise<Data> {
  const data: Data = new Map();
  for (const name of (await readdir(dir)).sort()) {
    if (!name.startsWith(".")) data.set(name, await readFile(join(dir, name)));
  }
  return data;
}

/** Names in a data directory that are not keys (temporary files and the like). */
export async function strayFiles(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((name) => name.startsWith("."));
}

/** Writes `data` as key files into `dir` (to prepare a leader's directory before it starts). */
export async function writeDir(dir: string, data: Data): Promise<void> {
  const entries = [...data];
  for (let i = 0; i < entries.length; i += 256) {
    await Promise.all(entries.slice(i, i + 256).map(([key, value]) => writeFile(join(dir, key), value)));
  }
}

/** `null` when `a` and `b` hold the same keys with the same bytes, else what differs (one line). */
export function difference(a: Data, b: Data): string | null {
  const onlyA = [...a.keys()].filter((key) => !b.has(key));
  const onlyB = [...b.keys()].filter((key) => !a.has(key));
  const differ = [...a.keys()].filter((key) => b.has(key) && !a.get(key)!.equals(b.get(key)!));
  if (onlyA.length + onlyB.length + differ.length === 0) return null;
  const some = (keys: string[]) => `${keys.length} [${keys.slice(0, 5).join(", ")}${keys.length > 5 ? ", …" : ""}]`;
  return `only in the first: ${some(onlyA)}; only in the second: ${some(onlyB)}; different bytes: ${some(differ)}`;
}

/** Reads one sample of `GET /metrics` (without labels); `undefined` when absent. */
export async function metric(url: string, name: string): Promise<number | undefined> {
  return (await metrics(url))[name];
}

/** Every unlabelled sample of `GET /metrics`, read in one request. */
export async function metrics(url: string): Promise<Record<string, number>> {
  const res = await fetchText(`${url}/metrics`);
  if (res.status !== 200) throw new Error(`GET ${url}/metrics answered ${res.status}`);
  const samples: Record<string, number> = {};
  for (const line of res.text.split("\n")) {
    const match = /^([a-z_]+) (-?[0-9.e+-]+)$/.exec(line);
    if (match) samples[match[1]] = Number(match[2]);
  }
  return samples;
}

/** Random bytes, every byte value possible. */
export function randomValue(size: number): Buffer {
  return randomBytes(size);
}
