// One way to show any failure: the gRPC code's name, the service's reason (ErrorInfo) and its
// Russian message, whether it came over grpc-web (ConnectError) or REST (google.rpc.Status
// as JSON, which Envoy's transcoder and its local replies both produce).
import { Code, ConnectError } from "@connectrpc/connect";

import { ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";

export class ApiError extends Error {
  constructor(
    readonly code: string,
    readonly reason: string,
    message: string,
    readonly metadata: Readonly<Record<string, string>> = {},
  ) {
    super(message);
    this.name = "ApiError";
  }

  /** `CODE (REASON): message`, as the console shows it. */
  describe(): string {
    const reason = this.reason ? ` (${this.reason})` : "";
    return `${this.code}${reason}: ${this.message}`;
  }
}

const ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo";

/** A gRPC code as its canonical name: PermissionDenied -> PERMISSION_DENIED. */
function codeName(code: number): string | undefined {
  const name: string | undefined = Code[code];
  return name?.replace(/(?<=.)([A-Z])/g, "_$1").toUpperCase();
}

/** `err` as an ApiError (anything else becomes UNKNOWN). */
export function asApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof ConnectError) {
    const [info] = err.findDetails(ErrorInfoSchema);
    return new ApiError(codeName(err.code) ?? "UNKNOWN", info?.reason ?? "", err.rawMessage, info?.metadata);
  }
  return new ApiError("UNKNOWN", "", err instanceof Error ? err.message : String(err));
}

interface StatusJson {
  code?: number;
  message?: string;
  details?: { "@type"?: string; reason?: string; metadata?: Record<string, string> }[];
}

/** The error of a REST reply that is not 2xx. */
export async function restError(response: Response): Promise<ApiError> {
  let body: StatusJson;
  try {
    body = (await response.json()) as StatusJson;
  } catch {
    return new ApiError(`HTTP_${response.status}`, "", response.statusText);
  }
  const info = body.details?.find((d) => d["@type"] === ERROR_INFO);
  const name = (body.code !== undefined && codeName(body.code)) || `HTTP_${response.status}`;
  return new ApiError(name, info?.reason ?? "", body.message ?? "", info?.metadata);
}
