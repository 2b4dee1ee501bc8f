// The upload page: drop files or pick them; each goes up as a resumable session with a
// progress bar, pause, resume and retry. Sessions left unfinished (a reload, a crash) are
// listed: choosing the same file again goes on from what the service has stored.
import { bytes, h } from "./dom.js";
import { asApiError, type ApiError } from "./errors.js";
import { discard, fingerprint, ResumableUpload, savedSessions, type UploadResult } from "./uploads.js";

export function uploadView(root: HTMLElement): () => void {
  const picker = h("input", { id: "file", type: "file", accept: "video/*", multiple: "" });
  const zone = h(
    "label",
    { id: "drop-zone", class: "drop-zone", for: "file" },
    "Перетащите видео сюда или нажмите, чтобы выбрать файл",
  );
  const list = h("ul", { id: "uploads", class: "uploads" });
  const unfinished = h("ul", { id: "unfinished", class: "uploads" });
  root.replaceChildren(
    h("h2", {}, "Загрузка"),
    zone,
    picker,
    list,
    h("h3", {}, "Незавершённые загрузки"),
    unfinished,
  );

  function showUnfinished(): void {
    const active = new Set([...list.querySelectorAll<HTMLElement>("li")].map((li) => li.dataset.key));
    unfinished.replaceChildren(
      ...savedSessions()
        .filter((s) => s.uploadId && !active.has(s.key))
        .map((s) => {
          const drop = h("button", { type: "button", class: "discard" }, "Отменить");
          drop.addEventListener("click", () => {
            void discard(s).then(showUnfinished, (err: unknown) => {
              drop.replaceWith(asApiError(err).describe());
            });
          });
          return h(
            "li",
            { "data-name": s.name },
            `${s.name}: сохранено ${bytes(s.persisted ?? 0)} из ${bytes(s.size)}. `,
            "Выберите этот файл снова, чтобы продолжить. ",
            drop,
          );
        }),
    );
  }

  function add(file: File): void {
    const bar = h("progress", { max: String(file.size), value: "0" });
    const text = h("span", { class: "state" });
    const pause = h("button", { type: "button", class: "pause" }, "Пауза");
    const resume = h("button", { type: "button", class: "resume", hidden: "" }, "Продолжить");
    const retry = h("button", { type: "button", class: "retry", hidden: "" }, "Повторить");
    const item = h("li", { "data-key": fingerprint(file), "data-name": file.name }, h("strong", {}, file.name), " ", bar, " ", text, " ", pause, resume, retry);
    list.append(item);
    const upload = new ResumableUpload(file, {
      progress(sent, persisted) {
        bar.value = sent;
        item.dataset.persisted = String(persisted);
        text.textContent = `${bytes(sent)} из ${bytes(file.size)}`;
      },
      state(state, detail) {
        item.dataset.state = state;
        pause.hidden = state !== "uploading" && state !== "starting";
        resume.hidden = state !== "paused";
        retry.hidden = state !== "failed";
        if (state === "paused") text.textContent = `пауза: сохранено ${bytes(upload.persisted)}`;
        if (state === "failed") text.textContent = (detail as ApiError).describe();
        if (state === "done") {
          const result = detail as UploadResult;
          bar.value = file.size;
          text.replaceChildren("загружено: ", h("a", { href: `#/event/${result.event_id}`, class: "event" }, result.event_id));
        }
      },
    });
    if (upload.resumed) item.dataset.resumed = "true";
    pause.addEventListener("click", () => {
      upload.pause();
    });
    for (const button of [resume, retry]) {
      button.addEventListener("click", () => {
        void upload.run();
      });
    }
    void upload.run();
    showUnfinished();
  }

  function addAll(files: FileList | null | undefined): void {
    for (const file of files ?? []) add(file);
  }

  picker.addEventListener("change", () => {
    addAll(picker.files);
    picker.value = "";
  });
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => {
    zone.classList.remove("over");
  });
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    addAll(e.dataTransfer?.files);
  });
  showUnfinished();
  return () => undefined; // uploads go on while another page shows
}
