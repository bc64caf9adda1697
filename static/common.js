/* Shared by every page: JSON API calls with the XSRF token, uploads with progress, alerts. */
"use strict";

window.KA = (() => {
  const xsrf = () => document.querySelector('meta[name="xsrf-token"]').content;

  function failure(status, text, fallback) {
    let message = fallback;
    try {
      const body = JSON.parse(text);
      if (body && body.error && body.error.message) message = body.error.message;
    } catch (_) {
      /* not JSON: keep the fallback */
    }
    const error = new Error(message);
    error.status = status;
    return error;
  }

  /** A JSON API call; rejects with the server's error message (or what went wrong). */
  async function api(method, path, body) {
    const options = { method, credentials: "same-origin", headers: { "X-XSRFToken": xsrf() } };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, options);
    } catch (e) {
      throw new Error("The server cannot be reached. Check your connection and try again.");
    }
    const text = await response.text();
    if (!response.ok) {
      throw failure(response.status, text, `${response.status} ${response.statusText}`);
    }
    return text ? JSON.parse(text) : null;
  }

  /** POST one file as multipart field "file"; XHR because fetch reports no upload progress. */
  function upload(path, file, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      const form = new FormData();
      form.append("file", file, file.name);
      xhr.open("POST", path);
      xhr.setRequestHeader("X-XSRFToken", xsrf());
      xhr.upload.addEventListener("progress", (e) => {
        if (e.lengthComputable && onProgress) onProgress((100 * e.loaded) / e.total);
      });
      xhr.addEventListener("load", () => {
        if (xhr.status >= 200 && xhr.status < 300) {
          resolve(xhr.responseText ? JSON.parse(xhr.responseText) : null);
        } else {
          const fallback =
            xhr.status === 413 ? "the file is too large" : `${xhr.status} ${xhr.statusText}`;
          reject(failure(xhr.status, xhr.responseText, fallback));
        }
      });
      xhr.addEventListener("error", () => reject(new Error("the connection was lost")));
      xhr.addEventListener("abort", () => reject(new Error("the upload was cancelled")));
      xhr.send(form);
    });
  }

  /** Show a message in #alerts; errors stay until dismissed, notes go after a while. */
  function alert(message, kind = "error", seconds = kind === "error" ? 0 : 6) {
    const box = document.getElementById("alerts");
    if (!box) return;
    const item = document.createElement("div");
    item.className = `alert alert-${kind}`;
    item.setAttribute("role", kind === "error" ? "alert" : "status");
    const text = document.createElement("span");
    text.textContent = message;
    const close = document.createElement("button");
    close.type = "button";
    close.className = "link";
    close.textContent = "dismiss";
    close.addEventListener("click", () => item.remove());
    item.append(text, close);
    box.append(item);
    if (seconds) setTimeout(() => item.remove(), seconds * 1000);
  }

  function bytes(n) {
    if (n < 1024) return `${n} B`;
    const units = ["KiB", "MiB", "GiB", "TiB"];
    let value = n;
    let unit = -1;
    do {
      value /= 1024;
      unit += 1;
    } while (value >= 1024 && unit < units.length - 1);
    return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
  }

  function tokens(usage) {
    if (!usage) return "";
    const total = (usage.prompt_tokens || 0) + (usage.completion_tokens || 0);
    if (!total) return "";
    const cost = usage.cost == null ? "" : ` · $${Number(usage.cost).toFixed(4)}`;
    return `${total.toLocaleString("en-US")} tokens${cost}`;
  }

  return { api, upload, alert, bytes, tokens };
})();
