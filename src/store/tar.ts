/**
 * POSIX tar, the snapshot's format: the headers of one regular file (ustar,
 * with a pax extended header before it when the name is longer than ustar's
 * 100-byte name field or the size does not fit its 11 octal digits), the
 * padding and the end-of-archive blocks; and {@link readTar}, a streaming
 * parser that yields one entry at a time with its body as a stream (ustar,
 * pax `x`/`g`, GNU `L`/`K` long names; checksums checked).
 */

/** Size of a tar block. */
export const BLOCK = 512;
/** The end of an archive: two zero blocks. */
export const END_OF_ARCHIVE = Buffer.alloc(2 * BLOCK);
/** One block of zeros, which {@link padding} gives views of. */
const ZERO_BLOCK = Buffer.alloc(BLOCK);
/** Largest size the ustar header's own field holds (11 octal digits). */
const MAX_USTAR_SIZE = 0o77777777777;
/** Largest extended header (pax `x`/`g`, GNU `L`/`K`) the parser reads. */
const MAX_META_BYTES = 64 * 1024;

/** An archive that is not tar, or is cut short. The message is one line. */
export class TarFormatError extends Error {
  override name = "TarFormatError";
}

/** The header blocks of one regular file (mode 0644, owner 0) named `name`, of `size` bytes, mtime in whole seconds. */
export function fileHeader(name: string, size: number, mtimeUs: number): Buffer {
  const records: string[] = [];
  if (Buffer.byteLength(name) > 100) records.push(paxRecord("path", name));
  if (size > MAX_USTAR_SIZE) records.push(paxRecord("size", String(size)));
  const mtime = Math.floor(mtimeUs / 1e6);
  const header = ustarHeader(name, size > MAX_USTAR_SIZE ? 0 : size, mtime, "0");
  if (records.length === 0) return header;
  const pax = Buffer.from(records.join(""));
  const paxName = `PaxHeaders/${name}`;
  return Buffer.concat([ustarHeader(paxName, pax.length, mtime, "x"), pax, padding(pax.length), header]);
}

/** The zeros that complete the last block of a body of `size` bytes (a view of a shared block: not to be written). */
export function padding(size: number): Buffer {
  return ZERO_BLOCK.subarray(0, (BLOCK - (size % BLOCK)) % BLOCK);
}

/** One ustar header block; `name` is cut to the 100 bytes of its field (a pax `path` carries the whole). */
function ustarHeader(name: string, size: number, mtime: number, type: string): Buffer {
  const block = Buffer.allocUnsafe(BLOCK).fill(0); // a slice of node's pool: one allocation per 16 headers
  block.write(name, 0, 100, "utf8");
  block.write("0000644\0", 100, "latin1");
  block.write("0000000\0", 108, "latin1");
  block.write("0000000\0", 116, "latin1");
  block.write(`${size.toString(8).padStart(11, "0")}\0`, 124, "latin1");
  block.write(`${Math.max(0, mtime).toString(8).padStart(11, "0")}\0`, 136, "latin1");
  block.write(type, 156, "latin1");
  block.write("ustar\x0000", 257, "latin1");
  block.write(`${checksum(block).toString(8).padStart(6, "0")}\0 `, 148, "latin1");
  return block;
}

/** One pax record, `LEN KEY=VALUE\n`, where LEN counts the whole record, its own digits included. */
function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  const bytes = Buffer.byteLength(body);
  let length = bytes + 1;
  while (String(length).length + bytes !== length) length = String(length).length + bytes;
  return `${length}${body}`;
}

/** The header checksum: the sum of its bytes, the checksum field counted as spaces. */
function checksum(block: Buffer): number {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : (block[i] ?? 0);
  return sum;
}

/** What an archive entry is. */
export type EntryKind = "file" | "directory" | "link" | "other";

/** One entry of an archive, as {@link readTar} yields it. */
export interface TarEntry {
  /** Its name: the pax `path` or GNU long name when there is one, else the ustar prefix and name. */
  name: string;
  kind: EntryKind;
  size: number;
  /** In microseconds: a pax `mtime`'s (digits past the microsecond cut), else the ustar field's whole seconds. */
  mtimeUs: number;
  /** Its bytes; read them (or not) before asking for the next entry. */
  body: AsyncIterable<Buffer>;
}

/**
 * Reads a tar archive from `source` one entry at a time, streaming bodies. Throws
 * {@link TarFormatError} for a bad checksum, a malformed field or an archive that
 * ends before its end-of-archive block.
 */
export async function* readTar(source: AsyncIterable<Uint8Array>): AsyncGenerator<TarEntry> {
  const input = new Reader(source);
  let meta: Record<string, string> = {};
  for (;;) {
    const block = await input.exactly(BLOCK, "an entry's header");
    if (block.every((byte) => byte === 0)) return; // end of archive (what follows it is ignored)
    const field = block.toString("latin1", 148, 156).replace(/[\0 ]+$/, "").trim();
    const sum = /^[0-7]+$/.test(field) ? parseInt(field, 8) : NaN;
    if (sum !== checksum(block) && sum !== signedChecksum(block)) {
      throw new TarFormatError("not a tar archive, or damaged: a header's checksum does not match");
    }
    const type = String.fromCharCode(block[156] ?? 0);
    let size = number(block, 124, 12);
    if (type === "x" || type === "g" || type === "L" || type === "K") {
      if (size > MAX_META_BYTES) throw new TarFormatError(`an extended header is larger than ${MAX_META_BYTES} bytes`);
      const data = await input.exactly(size, "an extended header");
      await input.exactly(padding(size).length, "an extended header");
      if (type === "x") meta = { ...meta, ...parsePax(data) };
      else if (type === "L") meta = { ...meta, path: data.toString("utf8").replace(/\0+$/, "") };
      continue; // global headers and long link names say nothing a key needs
    }
    if (meta.size !== undefined) size = Number(meta.size);
    if (!Number.isSafeInteger(size) || size < 0) throw new TarFormatError("an entry has a malformed size");
    const mtimeUs = meta.mtime !== undefined ? paxMicroseconds(meta.mtime) : number(block, 136, 12) * 1e6;
    const kind = kindOf(type);
    const name = meta.path ?? ustarName(block);
    meta = {};
    // Links and directories may carry a size in some tars, but their data is not a value: it is skipped.
    input.begin(size);
    yield { name, kind, size, mtimeUs: Number.isFinite(mtimeUs) ? mtimeUs : 0, body: input.body() };
    await input.skipBody();
  }
}

/** A pax time, `[-]SECONDS[.FRACTION]`, in whole microseconds (further digits cut, as the store cuts nanoseconds). */
function paxMicroseconds(text: string): number {
  const match = /^(-?)(\d+)(?:\.(\d*))?$/.exec(text);
  if (!match) return NaN;
  const us = Number(match[2]) * 1e6 + Number((match[3] ?? "").slice(0, 6).padEnd(6, "0"));
  return match[1] ? -us : us;
}

/** What a typeflag makes an entry: `0`, NUL and `7` are regular files; `1` and `2` links; `5` a directory. */
function kindOf(type: string): EntryKind {
  if (type === "0" || type === "\0" || type === "7") return "file";
  if (type === "5") return "directory";
  if (type === "1" || type === "2") return "link";
  return "other";
}

/** The name of a ustar header: `prefix/name` when the prefix field is set. */
function ustarName(block: Buffer): string {
  const name = text(block, 0, 100);
  const prefix = block.toString("latin1", 257, 262) === "ustar" ? text(block, 345, 155) : "";
  return prefix ? `${prefix}/${name}` : name;
}

/** The records of a pax extended header. */
function parsePax(data: Buffer): Record<string, string> {
  const records: Record<string, string> = {};
  let at = 0;
  while (at < data.length) {
    const space = data.indexOf(0x20, at);
    const length = Number(data.toString("latin1", at, space));
    if (space < 0 || !Number.isSafeInteger(length) || length <= 0 || at + length > data.length) {
      throw new TarFormatError("a pax extended header is malformed");
    }
    const record = data.toString("utf8", space + 1, at + length - 1);
    const equals = record.indexOf("=");
    if (equals > 0) records[record.slice(0, equals)] = record.slice(equals + 1);
    at += length;
  }
  return records;
}

function text(block: Buffer, start: number, length: number): string {
  const end = block.indexOf(0, start);
  return block.toString("utf8", start, end < 0 || end > start + length ? start + length : end);
}

/** A numeric field: octal digits (ended by NUL or space), or GNU's base-256 form for large numbers. */
function number(block: Buffer, start: number, length: number): number {
  if (((block[start] ?? 0) & 0x80) === 0) return octal(block, start, length);
  let value = (block[start] ?? 0) & 0x7f;
  for (let i = start + 1; i < start + length; i++) value = value * 256 + (block[i] ?? 0);
  return value;
}

function octal(block: Buffer, start: number, length: number): number {
  const digits = block.toString("latin1", start, start + length).replace(/[\0 ]+$/, "").trim();
  if (!/^[0-7]*$/.test(digits)) throw new TarFormatError("a header has a malformed number field");
  return digits === "" ? 0 : parseInt(digits, 8);
}

/** The checksum as some old tars computed it, over signed bytes. */
function signedChecksum(block: Buffer): number {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : block.readInt8(i);
  return sum;
}

/** Reads exact byte counts from a stream of chunks, keeping only the current chunk. */
class Reader {
  #source: AsyncIterator<Uint8Array>;
  #chunk: Buffer = Buffer.alloc(0);
  /** Bytes of the current entry's body not yet read, and its padding. */
  #left = 0;
  #padding = 0;

  constructor(source: AsyncIterable<Uint8Array>) {
    this.#source = source[Symbol.asyncIterator]();
  }

  /** The next `size` bytes, in one buffer (used for headers only). */
  async exactly(size: number, what: string): Promise<Buffer> {
    const parts: Buffer[] = [];
    let need = size;
    while (need > 0) {
      const part = await this.#next(need, what);
      parts.push(part);
      need -= part.length;
    }
    return parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts, size);
  }

  /** An entry's body of `size` bytes comes next. */
  begin(size: number): void {
    this.#left = size;
    this.#padding = padding(size).length;
  }

  /** The rest of the current body, as it arrives. */
  async *body(): AsyncGenerator<Buffer> {
    while (this.#left > 0) {
      const part = await this.#next(this.#left, "an entry's value");
      this.#left -= part.length;
      yield part;
    }
  }

  /** Drops what the consumer did not read of the current body, and its padding. */
  async skipBody(): Promise<void> {
    let need = this.#left + this.#padding;
    this.#left = this.#padding = 0;
    while (need > 0) need -= (await this.#next(need, "an entry's value")).length;
  }

  /** Up to `most` bytes; throws when the archive ends first. */
  async #next(most: number, what: string): Promise<Buffer> {
    while (this.#chunk.length === 0) {
      const { done, value } = await this.#source.next();
      if (done) throw new TarFormatError(`the archive ends inside ${what} (cut short?)`);
      this.#chunk = Buffer.from(value.buffer, value.byteOffset, value.byteLength);
    }
    const part = this.#chunk.subarray(0, most);
    this.#chunk = this.#chunk.subarray(part.length);
    return part;
  }
}
