// One video: its status (live until it ends), the video playing with the detection boxes
// drawn over it at their timestamps, the list of detections, the failure reason, and the
// result JSON to download.
import type { JsonObject } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";

import { authHeaders, checkout } from "./api.js";
import { chip, h, time } from "./dom.js";
import { asApiError, restError } from "./errors.js";
import type { Operation } from "./gen/checkout/v1/checkout_pb.js";
import { watch } from "./live.js";
import { failureOf, framesOf, type Frame } from "./result.js";

/** Videos above this are not fetched into the page to play (the rest of the page works). */
const PLAY_MAX_BYTES = 512 * 1024 * 1024;

export function eventView(root: HTMLElement, eventId: string): () => void {
  const state = h("div", { id: "event-status" });
  const error = h("p", { id: "error", class: "error", role: "alert" });
  const player = h("div", { id: "player", class: "player" });
  const detections = h("div", { id: "detections" });
  const failure = h("div", { id: "failure" });
  root.replaceChildren(h("h2", {}, `Событие ${eventId}`), error, state, failure, player, detections);
  const urls: string[] = [];
  let shown = "";
  let size = 0;
  let reported = ""; // the event's own `error` (REASON: message) once failed

  function show(op: Operation): void {
    state.replaceChildren(
      h("dl", {},
        h("dt", {}, "Статус"), h("dd", {}, chip(op.status)),
        h("dt", {}, "Файл"), h("dd", {}, op.filename || "—"),
        h("dt", {}, "Создано"), h("dd", {}, time(op.createdAt && timestampDate(op.createdAt))),
        h("dt", {}, "Изменено"), h("dd", {}, time(op.updatedAt && timestampDate(op.updatedAt))),
      ),
    );
    size = Number(op.sizeBytes);
    reported = op.error;
    if (op.status !== shown && (op.status === "ready" || op.status === "failed")) void result();
    shown = op.status;
  }

  async function result(): Promise<void> {
    try {
      const answer = await checkout.getResult({ eventId });
      const prediction: JsonObject = answer.prediction ?? {};
      const json = new Blob([JSON.stringify(prediction, null, 2)], { type: "application/json" });
      const url = URL.createObjectURL(json);
      urls.push(url);
      const link = h("a", { id: "result-json", href: url, download: `${eventId}.json` }, "JSON результата");
      // A failure without a result document (its `error` is all there is): as the service says.
      const failed =
        failureOf(prediction) ??
        (shown === "failed" ? { reason: reported.split(":")[0] ?? "FAILED", description: "", message: reported } : undefined);
      if (failed) {
        failure.replaceChildren(
          h("p", { class: "error" },
            h("code", { id: "failure-reason" }, failed.reason), " ",
            h("span", { id: "failure-description" }, failed.description || failed.message)),
          ...(failed.description ? [h("p", { id: "failure-message", class: "detail" }, failed.message)] : []),
          link,
        );
        return;
      }
      const frames = framesOf(prediction);
      failure.replaceChildren(link);
      detections.replaceChildren(h("h3", {}, "Обнаружения"), listOf(frames));
      await play(frames);
    } catch (err) {
      error.textContent = asApiError(err).describe();
    }
  }

  async function play(frames: Frame[]): Promise<void> {
    if (size > PLAY_MAX_BYTES) {
      player.textContent = "Видео слишком велико, чтобы показать его здесь.";
      return;
    }
    // GetVideo streams the bytes (no Content-Length): the event's size says how big it is.
    const response = await fetch(`/api/video/${encodeURIComponent(eventId)}`, { headers: authHeaders() });
    if (!response.ok) throw await restError(response);
    const url = URL.createObjectURL(await response.blob());
    urls.push(url);
    const video = h("video", { id: "video", src: url, controls: "", muted: "", preload: "auto" });
    const canvas = h("canvas", { id: "overlay", class: "overlay" });
    player.replaceChildren(video, canvas);
    const draw = (): void => {
      drawBoxes(canvas, video, frames);
    };
    video.addEventListener("loadedmetadata", draw);
    video.addEventListener("timeupdate", draw);
    video.addEventListener("seeked", draw);
    const loop = (): void => {
      if (!video.paused && !video.ended) {
        draw();
        requestAnimationFrame(loop);
      }
    };
    video.addEventListener("play", () => requestAnimationFrame(loop));
  }

  void checkout.getStatus({ eventId }).then(
    ({ operation }) => {
      if (operation) show(operation);
    },
    (err: unknown) => {
      error.textContent = asApiError(err).describe();
    },
  );
  const stop = watch(eventId, {
    update: (u) => {
      void checkout.getStatus({ eventId }).then(({ operation }) => {
        if (operation && operation.status === u.status) show(operation);
      });
    },
    connected: () => undefined,
    lost: (e) => {
      error.textContent = e.describe();
    },
  });
  return () => {
    stop();
    for (const url of urls) URL.revokeObjectURL(url);
  };
}

function listOf(frames: Frame[]): HTMLElement {
  const items = frames.flatMap((f) =>
    f.detections.map((d) =>
      h("li", {}, `${f.timestamp.toFixed(2)} с: ${d.label} ${(d.score * 100).toFixed(0)} % `,
        h("code", {}, `[${d.box.map((v) => v.toFixed(0)).join(", ")}]`)),
    ),
  );
  return items.length ? h("ol", { class: "detections" }, ...items) : h("p", {}, "Ничего не найдено.");
}

/** The boxes of the sampled frame shown at the video's current time. */
export function drawBoxes(canvas: HTMLCanvasElement, video: HTMLVideoElement, frames: Frame[]): void {
  if (!video.videoWidth) return;
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  const context = canvas.getContext("2d");
  if (!context) return;
  context.clearRect(0, 0, canvas.width, canvas.height);
  const frame = frameAt(frames, video.currentTime);
  const boxes = frame?.detections ?? [];
  context.lineWidth = Math.max(2, canvas.width / 200);
  context.strokeStyle = "#ff2d55";
  context.fillStyle = "#ff2d55";
  context.font = `${Math.max(12, canvas.width / 40)}px sans-serif`;
  for (const d of boxes) {
    const [x1, y1, x2, y2] = d.box;
    context.strokeRect(x1, y1, x2 - x1, y2 - y1);
    context.fillText(`${d.label} ${(d.score * 100).toFixed(0)}%`, x1, Math.max(12, y1 - 4));
  }
  canvas.dataset.boxes = String(boxes.length);
  canvas.dataset.frame = frame ? String(frame.index) : "";
}

/** The last sampled frame at or before `t`, if it is no older than the sampling step. */
function frameAt(frames: Frame[], t: number): Frame | undefined {
  let found: Frame | undefined;
  for (const f of frames) {
    if (f.timestamp <= t + 1e-3) found = f;
    else break;
  }
  return found && t - found.timestamp < found.span ? found : undefined;
}
