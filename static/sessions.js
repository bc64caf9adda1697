/* The session list: create, rename, delete, and import a notebook as a new session. */
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const list = $("session-list");

  $("create-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const button = $("create");
    button.disabled = true;
    button.textContent = "Starting…";
    try {
      const session = await KA.api("POST", "/api/v1/sessions", { title: $("new-title").value });
      window.location.href = `/sessions/${session.id}`;
    } catch (err) {
      KA.alert(`The session was not created: ${err.message}`);
      button.disabled = false;
      button.textContent = "New session";
    }
  });

  $("import-file").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    e.target.value = "";
    if (!file) return;
    const box = $("import-progress");
    const bar = box.querySelector("progress");
    box.querySelector("span").textContent = `Importing ${file.name}…`;
    bar.value = 0;
    box.hidden = false;
    try {
      const session = await KA.upload("/api/v1/notebooks", file, (pct) => {
        bar.value = pct;
      });
      window.location.href = `/sessions/${session.id}`;
    } catch (err) {
      box.hidden = true;
      KA.alert(`${file.name} was not imported: ${err.message}`);
    }
  });

  if (!list) return;

  function rename(row) {
    const link = row.querySelector(".session-title");
    const field = document.createElement("input");
    field.className = "rename-input";
    field.value = row.dataset.title;
    field.maxLength = 200;
    field.setAttribute("aria-label", "New title");
    link.hidden = true;
    link.after(field);
    field.focus();
    field.select();
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const title = field.value.trim();
      if (save && title && title !== row.dataset.title) {
        try {
          const session = await KA.api("PATCH", `/api/v1/sessions/${row.dataset.sessionId}`, { title });
          row.dataset.title = session.title;
          link.textContent = session.title;
        } catch (err) {
          KA.alert(`The session was not renamed: ${err.message}`);
        }
      }
      field.remove();
      link.hidden = false;
      link.focus();
    };
    field.addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        finish(true);
      } else if (e.key === "Escape") {
        finish(false);
      }
    });
    field.addEventListener("blur", () => finish(true));
  }

  async function remove(row, button) {
    if (!button.classList.contains("confirming")) {
      button.classList.add("confirming");
      button.textContent = "Delete for good?";
      setTimeout(() => {
        button.classList.remove("confirming");
        button.textContent = "Delete";
      }, 4000);
      return;
    }
    button.disabled = true;
    try {
      await KA.api("DELETE", `/api/v1/sessions/${row.dataset.sessionId}`);
      row.remove();
      KA.alert(`Deleted “${row.dataset.title}”.`, "note");
    } catch (err) {
      button.disabled = false;
      KA.alert(`The session was not deleted: ${err.message}`);
    }
  }

  list.addEventListener("click", (e) => {
    const row = e.target.closest(".session-row");
    if (!row) return;
    if (e.target.closest("button.rename")) rename(row);
    const del = e.target.closest("button.delete");
    if (del) remove(row, del);
  });
})();
