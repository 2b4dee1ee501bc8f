// How the console talks to checkout: grpc-web through Envoy (the page's own origin) for the
// calls a browser can make, REST for what needs a request body stream (uploads) or raw bytes
// (the video). Both carry the API key the person typed, kept for the browser session only.
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { CheckoutService } from "./gen/checkout/v1/checkout_pb.js";

const KEY_ITEM = "checkout.apiKey";

/** The API key of this browser session ("" without one). */
export function apiKey(): string {
  return sessionStorage.getItem(KEY_ITEM) ?? "";
}

export function setApiKey(key: string): void {
  if (key) sessionStorage.setItem(KEY_ITEM, key);
  else sessionStorage.removeItem(KEY_ITEM);
}

/** Headers that authenticate a call, as the service expects them. */
export function authHeaders(): Record<string, string> {
  const key = apiKey();
  return key ? { authorization: `Bearer ${key}` } : {};
}

const authenticate: Interceptor = (next) => (request) => {
  for (const [name, value] of Object.entries(authHeaders())) request.header.set(name, value);
  return next(request);
};

export const checkout: Client<typeof CheckoutService> = createClient(
  CheckoutService,
  createGrpcWebTransport({
    baseUrl: window.location.origin,
    useBinaryFormat: true,
    interceptors: [authenticate],
  }),
);
