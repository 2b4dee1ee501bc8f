// Reading the detection runner's result JSON (docs/runner.md), which GetResult returns as
// the prediction: its sampled frames with their boxes, or its failure.
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";

export interface Detection {
  label: string;
  score: number;
  box: [number, number, number, number]; // x1, y1, x2, y2 in the frame's pixels
}

export interface Frame {
  index: number;
  timestamp: number; // seconds
  span: number; // how long its boxes stay shown: the sampling step
  detections: Detection[];
}

function num(value: JsonValue | undefined): number {
  return typeof value === "number" ? value : 0;
}

function obj(value: JsonValue | undefined): JsonObject {
  return value !== null && typeof value === "object" && !Array.isArray(value) ? value : {};
}

function list(value: JsonValue | undefined): JsonValue[] {
  return Array.isArray(value) ? value : [];
}

export function framesOf(result: JsonObject): Frame[] {
  const sampleFps = num(result.sample_fps);
  const span = sampleFps > 0 ? 1 / sampleFps : 0.5;
  return list(result.frames)
    .map((value) => {
      const frame = obj(value);
      return {
        index: num(frame.index),
        timestamp: num(frame.timestamp_s),
        span,
        detections: list(frame.detections).map((d) => {
          const detection = obj(d);
          const box = obj(detection.box);
          return {
            label: typeof detection.label === "string" ? detection.label : "",
            score: num(detection.score),
            box: [num(box.x1), num(box.y1), num(box.x2), num(box.y2)] as [number, number, number, number],
          };
        }),
      };
    })
    .sort((a, b) => a.timestamp - b.timestamp);
}

export interface Failure {
  reason: string; // the stable code
  description: string; // for people, in Russian ("" from a runner that gives none)
  message: string; // what went wrong, technically
}

function text(value: JsonValue | undefined): string {
  return typeof value === "string" ? value : "";
}

/** What a failure result says, or undefined for a success. */
export function failureOf(result: JsonObject): Failure | undefined {
  if (result.status !== "failed") return undefined;
  const error = obj(result.error);
  return {
    reason: text(error.reason) || "FAILED",
    description: text(error.description),
    message: text(error.message),
  };
}
