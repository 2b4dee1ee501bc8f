// Resumable uploads over the REST path (a browser cannot stream a gRPC request body):
//   POST  /api/uploads                           starts a session (StartResumableUpload)
//   PATCH /api/uploads/{id}?offset=N[&finish=true] writes bytes from N (WriteUploadHttp)
//   GET   /api/uploads/{id}                      where to go on from (QueryUploadStatus)
//   DELETE /api/uploads/{id}                     gives the session up (CancelUpload)
// One part (the session's part size) per PATCH: `persisted_size` moves at part boundaries,
// so a pause or a cut loses at most the part in flight. Sessions are remembered in
// localStorage under the file's name, size and modification time, so that after a reload
// or a crash the same file, chosen again, goes on from the offset the service reports.
import { authHeaders } from "./api.js";
import { ApiError, restError } from "./errors.js";

export interface UploadResult {
  event_id: string;
  video_id: string;
  size_bytes: string;
  sha256: string;
  deduplicated?: boolean;
}

/** What the browser remembers of an unfinished upload. */
export interface SavedSession {
  key: string; // the file's fingerprint
  name: string;
  size: number;
  idempotencyKey: string;
  uploadId?: string;
  partSize?: number;
  persisted?: number;
  expires?: string;
}

export type UploadState = "starting" | "uploading" | "paused" | "failed" | "done";

export interface UploadListener {
  progress(sent: number, persisted: number): void;
  state(state: UploadState, detail?: ApiError | UploadResult): void;
}

const STORE = "checkout.uploads";

/** A retry key for a new session: 128 random bits as hex (crypto.randomUUID needs a secure
 * context, which a plain-HTTP name other than localhost is not). */
function randomKey(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function fingerprint(file: File): string {
  return `${file.name}\u0000${file.size}\u0000${file.lastModified}`;
}

export function savedSessions(): SavedSession[] {
  const now = Date.now();
  return Object.values(readStore()).filter((s) => !s.expires || Date.parse(s.expires) > now);
}

function readStore(): Record<string, SavedSession> {
  try {
    return JSON.parse(localStorage.getItem(STORE) ?? "{}") as Record<string, SavedSession>;
  } catch {
    return {};
  }
}

function save(session: SavedSession): void {
  localStorage.setItem(STORE, JSON.stringify({ ...readStore(), [session.key]: session }));
}

export function forget(key: string): void {
  const store = readStore();
  // eslint-disable-next-line @typescript-eslint/no-dynamic-delete -- a map kept as JSON
  delete store[key];
  localStorage.setItem(STORE, JSON.stringify(store));
}

/** Gives a remembered session up: the service discards its bytes. */
export async function discard(session: SavedSession): Promise<void> {
  if (session.uploadId) {
    const response = await fetch(`/api/uploads/${encodeURIComponent(session.uploadId)}`, {
      method: "DELETE",
      headers: authHeaders(),
    });
    if (!response.ok && response.status !== 404) throw await restError(response);
  }
  forget(session.key);
}

async function json<T>(response: Response): Promise<T> {
  if (!response.ok) throw await restError(response);
  return (await response.json()) as T;
}

interface SessionJson {
  upload_id: string;
  persisted_size?: string;
  part_size_bytes?: string;
  expire_time?: string;
  result?: UploadResult;
}

interface WriteJson {
  persisted_size?: string;
  result?: UploadResult;
}

export class ResumableUpload {
  private session: SavedSession;
  private partSize = 8 * 1024 * 1024;
  private request: XMLHttpRequest | undefined;
  private running = false;
  state: UploadState = "starting";
  persisted = 0;

  constructor(
    readonly file: File,
    private readonly listener: UploadListener,
  ) {
    const key = fingerprint(file);
    this.session = readStore()[key] ?? {
      key,
      name: file.name,
      size: file.size,
      idempotencyKey: randomKey(),
    };
    save(this.session);
  }

  /** Whether the browser remembered this file's session from before. */
  get resumed(): boolean {
    return this.session.uploadId !== undefined;
  }

  /** Starts, or goes on from what the service has stored. */
  async run(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      const result = await this.upload();
      forget(this.session.key);
      this.setState("done", result);
    } catch (err) {
      if (this.state === "paused") return;
      this.setState("failed", err instanceof ApiError ? err : new ApiError("UNKNOWN", "", String(err)));
    } finally {
      this.running = false;
      this.request = undefined;
    }
  }

  /** Stops after cutting the part in flight; `run` goes on from the stored offset. */
  pause(): void {
    this.setState("paused");
    this.request?.abort();
  }

  private setState(state: UploadState, detail?: ApiError | UploadResult): void {
    this.state = state;
    this.listener.state(state, detail);
  }

  private async upload(): Promise<UploadResult> {
    this.setState("starting");
    const begun = await this.begin();
    if (begun.result) return begun.result;
    let offset = this.persisted;
    for (;;) {
      // Paused while the session was asked for, or between two parts: stop here.
      if (this.state === "paused") throw new ApiError("CANCELLED", "", "загрузка приостановлена");
      if (this.state !== "uploading") this.setState("uploading");
      const end = Math.min(offset + this.partSize, this.file.size);
      const finish = end === this.file.size;
      const answer = await this.write(offset, end, finish);
      if (answer.result) return answer.result;
      this.persisted = Number(answer.persisted_size ?? 0);
      this.session.persisted = this.persisted;
      save(this.session);
      this.listener.progress(this.persisted, this.persisted);
      if (this.persisted < end) throw new ApiError("INTERNAL", "", "the service kept less than it was sent");
      offset = this.persisted;
    }
  }

  /** The session: a remembered one (asking where to go on from) or a new one. */
  private async begin(): Promise<SessionJson> {
    if (this.session.uploadId) {
      const response = await fetch(`/api/uploads/${encodeURIComponent(this.session.uploadId)}`, {
        headers: authHeaders(),
      });
      if (response.ok) {
        const status = (await response.json()) as SessionJson;
        this.partSize = this.session.partSize ?? this.partSize;
        this.persisted = Number(status.persisted_size ?? 0);
        this.listener.progress(this.persisted, this.persisted);
        return { ...status, upload_id: this.session.uploadId };
      }
      if (response.status !== 404) throw await restError(response);
      delete this.session.uploadId; // expired or cancelled: start again
    }
    const started = await json<SessionJson>(
      await fetch("/api/uploads", {
        method: "POST",
        headers: { ...authHeaders(), "content-type": "application/json" },
        body: JSON.stringify({
          filename: this.file.name,
          content_type: this.file.type || "video/mp4",
          size_bytes: String(this.file.size),
          idempotency_key: this.session.idempotencyKey,
        }),
      }),
    );
    this.partSize = Number(started.part_size_bytes ?? this.partSize);
    this.persisted = Number(started.persisted_size ?? 0);
    this.session = {
      ...this.session,
      uploadId: started.upload_id,
      partSize: this.partSize,
      persisted: this.persisted,
      ...(started.expire_time ? { expires: started.expire_time } : {}),
    };
    save(this.session);
    return started;
  }

  /** One PATCH of the bytes [offset, end), with progress as they leave. */
  private write(offset: number, end: number, finish: boolean): Promise<WriteJson> {
    const id = encodeURIComponent(this.session.uploadId ?? "");
    const query = `offset=${offset}${finish ? "&finish=true" : ""}`;
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      this.request = xhr;
      xhr.open("PATCH", `/api/uploads/${id}?${query}`);
      for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
      xhr.setRequestHeader("content-type", "application/octet-stream");
      xhr.upload.onprogress = (e) => {
        this.listener.progress(offset + e.loaded, this.persisted);
      };
      xhr.onload = () => {
        const response = new Response(xhr.responseText, { status: xhr.status });
        if (xhr.status >= 200 && xhr.status < 300) {
          resolve(JSON.parse(xhr.responseText) as WriteJson);
        } else {
          void restError(response).then(reject);
        }
      };
      xhr.onerror = () => {
        reject(new ApiError("UNAVAILABLE", "", "соединение прервано"));
      };
      xhr.onabort = () => {
        reject(new ApiError("CANCELLED", "", "загрузка приостановлена"));
      };
      xhr.send(this.file.slice(offset, end));
    });
  }
}
