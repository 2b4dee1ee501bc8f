// A WatchStatus stream that is always there while a view shows: it reopens after an error or
// an end (with a growing pause, at most 10 s) until the view stops it.
import type { StatusUpdate } from "./gen/checkout/v1/checkout_pb.js";
import { checkout } from "./api.js";
import { asApiError, type ApiError } from "./errors.js";

export interface LiveListener {
  update(update: StatusUpdate): void;
  connected(): void;
  lost(error: ApiError): void;
}

export function watch(eventId: string, listener: LiveListener): () => void {
  const stop = new AbortController();
  const stopped = (): boolean => stop.signal.aborted;
  void (async () => {
    let pause = 500;
    while (!stopped()) {
      try {
        listener.connected();
        for await (const update of checkout.watchStatus({ eventId }, { signal: stop.signal })) {
          pause = 500;
          if (!update.heartbeat) listener.update(update);
        }
        if (eventId) return; // a single event's watch ends after its terminal status
      } catch (err) {
        if (stopped()) return;
        const error = asApiError(err);
        listener.lost(error);
        if (error.code === "UNAUTHENTICATED" || error.code === "PERMISSION_DENIED") return;
      }
      await new Promise((resolve) => setTimeout(resolve, pause));
      pause = Math.min(pause * 2, 10_000);
    }
  })();
  return () => {
    stop.abort();
  };
}
