// The operations table: ListStatuses a page at a time (newest first, with a status filter),
// kept current by one all-events WatchStatus stream over grpc-web.
import { timestampDate } from "@bufbuild/protobuf/wkt";

import { checkout } from "./api.js";
import { bytes, chip, h, time } from "./dom.js";
import { asApiError } from "./errors.js";
import type { Operation, StatusUpdate } from "./gen/checkout/v1/checkout_pb.js";
import { watch } from "./live.js";

const STATUSES = ["", "new", "sent", "ready", "failed"];
const PAGE_SIZE = 50;

export function operationsView(root: HTMLElement): () => void {
  let status = "";
  let tokens: string[] = [""]; // the token of each page seen so far: tokens[i] opens page i
  let page = 0;
  const rows = new Map<string, HTMLTableRowElement>();
  let total = -1; // as the listing counted them (-1: not counted), plus those seen arrive

  const filter = h("select", { id: "status-filter", "aria-label": "Статус" });
  for (const s of STATUSES) filter.append(h("option", { value: s }, s || "все"));
  const body = h("tbody");
  const summary = h("span", { id: "summary" });
  const live = h("span", { id: "live", class: "live" }, "…");
  const previous = h("button", { id: "previous-page", type: "button" }, "← Назад");
  const next = h("button", { id: "next-page", type: "button" }, "Дальше →");
  const error = h("p", { id: "error", class: "error", role: "alert" });
  root.replaceChildren(
    h("h2", {}, "Операции"),
    h("div", { class: "toolbar" }, filter, previous, next, summary, live),
    error,
    h(
      "table",
      { id: "operations" },
      h(
        "thead",
        {},
        h("tr", {}, ...["Событие", "Файл", "Статус", "Изменён", "Размер", "Ошибка"].map((t) => h("th", {}, t))),
      ),
      body,
    ),
  );

  function row(op: Operation): HTMLTableRowElement {
    const tr = h(
      "tr",
      { "data-event": op.eventId },
      h("td", {}, h("a", { href: `#/event/${op.eventId}` }, op.eventId.slice(0, 8))),
      h("td", {}, op.filename),
      h("td", { class: "status" }, chip(op.status)),
      h("td", { class: "updated" }, time(op.updatedAt && timestampDate(op.updatedAt))),
      h("td", {}, bytes(Number(op.sizeBytes))),
      h("td", { class: "reason" }, op.error),
    );
    rows.set(op.eventId, tr);
    return tr;
  }

  async function load(): Promise<void> {
    error.textContent = "";
    try {
      const answer = await checkout.listStatuses({
        pageSize: PAGE_SIZE,
        pageToken: tokens[page] ?? "",
        status,
      });
      rows.clear();
      body.replaceChildren(...answer.operations.map(row));
      tokens = [...tokens.slice(0, page + 1), answer.nextPageToken];
      total = answer.total;
      summarize();
      previous.disabled = page === 0;
      next.disabled = !answer.nextPageToken;
    } catch (err) {
      error.textContent = asApiError(err).describe();
    }
  }

  function summarize(): void {
    const counted = total >= 0 ? ` из ${total}` : "";
    summary.textContent = `страница ${page + 1}: ${rows.size}${counted}`;
  }

  async function changed(update: StatusUpdate): Promise<void> {
    const tr = rows.get(update.eventId);
    if (tr) {
      tr.querySelector(".status")?.replaceChildren(chip(update.status));
      tr.querySelector(".updated")?.replaceChildren(time(update.updatedAt && timestampDate(update.updatedAt)));
      tr.querySelector(".reason")?.replaceChildren(update.error);
      if (status && update.status !== status) tr.classList.add("stale");
      return;
    }
    if (page !== 0 || (status && update.status !== status)) return;
    try {
      const { operation } = await checkout.getStatus({ eventId: update.eventId });
      if (operation && !rows.has(operation.eventId)) {
        body.prepend(row(operation));
        if (total >= 0) total += 1;
        summarize();
      }
    } catch {
      // not ours to see, or gone: the table shows what the listing shows
    }
  }

  filter.addEventListener("change", () => {
    status = filter.value;
    tokens = [""];
    page = 0;
    void load();
  });
  previous.addEventListener("click", () => {
    page = Math.max(0, page - 1);
    void load();
  });
  next.addEventListener("click", () => {
    page += 1;
    void load();
  });

  void load();
  return watch("", {
    update: (u) => void changed(u),
    connected: () => {
      // Back after a loss: what changed meanwhile was not pushed, so read the page again.
      if (live.dataset.state === "lost") void load();
      live.textContent = "● в эфире";
      live.dataset.state = "live";
    },
    lost: (e) => {
      live.textContent = "○ нет связи";
      live.dataset.state = "lost";
      error.textContent = e.describe();
    },
  });
}
