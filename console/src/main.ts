// The console's shell: the API key field and three pages chosen by the URL's fragment:
//   #/            operations (the live table)
//   #/upload      uploads (they go on while another page shows)
//   #/event/{id}  one video
import { apiKey, setApiKey } from "./api.js";
import { h } from "./dom.js";
import { eventView } from "./event-view.js";
import { operationsView } from "./operations.js";
import { uploadView } from "./upload-view.js";

const main = document.querySelector("main") ?? document.body.appendChild(h("main"));
const page = h("section", { id: "page" });
const uploads = h("section", { id: "upload-page", hidden: "" });
main.replaceChildren(page, uploads);
uploadView(uploads);

const key = document.querySelector<HTMLInputElement>("#api-key");
const keyForm = document.querySelector<HTMLFormElement>("#key-form");
if (key && keyForm) {
  key.value = apiKey();
  keyForm.addEventListener("submit", (e) => {
    e.preventDefault();
    setApiKey(key.value.trim());
    route();
  });
}

let leave: () => void = () => undefined;

function route(): void {
  leave();
  const path = location.hash.replace(/^#/, "") || "/";
  const event = /^\/event\/([0-9a-fA-F-]{36})$/.exec(path);
  uploads.hidden = path !== "/upload";
  page.hidden = path === "/upload";
  for (const link of document.querySelectorAll<HTMLAnchorElement>("nav a")) {
    link.classList.toggle("active", link.hash === `#${path}`);
  }
  if (path === "/upload") leave = () => undefined;
  else if (event?.[1]) leave = eventView(page, event[1]);
  else leave = operationsView(page);
}

window.addEventListener("hashchange", route);
route();
