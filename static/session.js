/* The session page, live: follows the session's event stream and keeps the record on screen in
   step with it. Cells are elements keyed by cell id (#cell-<id>): an event about a cell updates or
   replaces that element, never adds a second one. What a cell finally looks like comes from the
   server (/sessions/<id>/cells/<cell_id>), the same HTML a reload shows. */
"use strict";

(() => {
  const page = JSON.parse(document.getElementById("page-data").textContent);
  const sid = page.session_id;
  const base = `/api/v1/sessions/${sid}`;
  const $ = (id) => document.getElementById(id);
  const cellsEl = $("cells");
  const liveEl = $("live");
  const input = $("input");
  const WHO = { agent: "agent", web: "you", user: "you", gateway: "gateway (JupyterLab)", mcp: "MCP client" };

  let turn = page.turn; // {id, waiting, text, usage} while the agent works
  const running = new Set(page.running); // code cells started and not completed
  let usageBase = page.usage;
  let turnUsage = turn && turn.usage;
  let approvalCode = "";
  let starting = 0; // code cells sent and not started yet (the kernel may be starting)

  // ------------------------------------------------------------------ scrolling

  function nearBottom() {
    return window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 240;
  }

  function keepBottom(change) {
    const stick = nearBottom();
    change();
    if (stick) window.scrollTo(0, document.documentElement.scrollHeight);
  }

  // ------------------------------------------------------------------ cells

  const cellEl = (id) => document.getElementById(`cell-${id}`);

  /** Put a cell where its index says (placeholders, index unknown yet, stay at the end). */
  function place(el) {
    const index = el.dataset.index === "" ? Infinity : Number(el.dataset.index);
    for (const other of cellsEl.children) {
      if (other === el) continue;
      const at = other.dataset.index === "" ? Infinity : Number(other.dataset.index);
      if (at > index) {
        if (el.nextElementSibling !== other) cellsEl.insertBefore(el, other);
        return;
      }
    }
    if (el.parentNode !== cellsEl || el.nextElementSibling) cellsEl.appendChild(el);
    const empty = $("empty");
    if (empty) empty.remove();
  }

  function element(tag, className, text) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined) el.textContent = text;
    return el;
  }

  /** A cell as the event told it, until the server's rendering arrives. */
  function placeholder(id, role, source, code) {
    const existing = cellEl(id);
    if (existing) return existing;
    const el = element("article");
    el.id = `cell-${id}`;
    el.dataset.cellId = id;
    el.dataset.index = "";
    if (code) {
      el.className = `cell cell-code role-${role} status-pending`;
      el.dataset.kind = "code";
      el.dataset.status = "pending";
      const head = element("header", "cell-head");
      head.append(
        element("span", `who who-${role}`, WHO[role] || role),
        element("span", "count", "[ ]"),
        element("span", "state state-pending", "running…"),
      );
      const details = element("details", "code");
      details.open = true;
      const summary = element("summary", "", "Code");
      const pre = element("pre", "hl");
      pre.append(element("code", "", source));
      details.append(summary, pre);
      el.append(head, details, element("div", "outputs"));
    } else {
      const kind = role === "user" ? "user" : role === "assistant" ? "assistant" : "note";
      el.className = `cell cell-${kind} role-${role}`;
      el.dataset.kind = kind;
      const bubble = element("div", "bubble");
      bubble.append(element("div", "text plain", source));
      el.append(bubble);
    }
    place(el);
    return el;
  }

  const loading = new Map(); // cell id → {again}: one request at a time per cell, coalesced

  function refresh(id) {
    const state = loading.get(id);
    if (state) {
      state.again = true;
      return;
    }
    const mine = { again: false };
    loading.set(id, mine);
    (async () => {
      try {
        do {
          mine.again = false;
          await load(id);
        } while (mine.again);
      } finally {
        loading.delete(id);
      }
    })();
  }

  async function load(id) {
    let response;
    try {
      response = await fetch(`/sessions/${sid}/cells/${encodeURIComponent(id)}`, {
        credentials: "same-origin",
      });
    } catch (e) {
      KA.alert("A cell could not be loaded: the server cannot be reached.");
      return;
    }
    if (!response.ok) {
      if (response.status !== 404) KA.alert(`A cell could not be loaded (${response.status}).`);
      return;
    }
    const template = document.createElement("template");
    template.innerHTML = (await response.text()).trim();
    const fresh = template.content.firstElementChild;
    if (fresh) keepBottom(() => merge(fresh));
  }

  /** Bring the server's rendering of a cell on screen, keeping what did not change (frames,
      charts, the collapsed state of the code) in place so nothing reloads or jumps. */
  function merge(fresh) {
    const old = cellEl(fresh.dataset.cellId);
    if (!old) {
      place(fresh);
      KAOutputs.enhance(fresh);
      return;
    }
    const oldOut = old.querySelector(".outputs");
    const newOut = fresh.querySelector(".outputs");
    const oldCode = old.querySelector("details.code");
    const newCode = fresh.querySelector("details.code");
    if (oldCode && newCode) newCode.open = oldCode.open;
    if (!oldOut || !newOut || old.dataset.kind !== fresh.dataset.kind) {
      old.replaceWith(fresh);
      place(fresh);
      KAOutputs.enhance(fresh);
      return;
    }
    for (const name of ["class", "data-index", "data-status", "data-kind"]) {
      old.setAttribute(name, fresh.getAttribute(name));
    }
    old.querySelector(".cell-head").replaceWith(fresh.querySelector(".cell-head"));
    const oldPre = oldCode.querySelector("pre");
    const newPre = newCode.querySelector("pre");
    if (oldPre.innerHTML !== newPre.innerHTML) oldPre.replaceWith(newPre);
    oldCode.querySelector("summary").replaceWith(newCode.querySelector("summary"));
    const incoming = [...newOut.children];
    incoming.forEach((next, i) => {
      const current = oldOut.children[i];
      if (current && current.dataset.key === next.dataset.key) return;
      if (current) oldOut.replaceChild(next, current);
      else oldOut.appendChild(next);
    });
    while (oldOut.children.length > incoming.length) oldOut.lastElementChild.remove();
    place(old);
    KAOutputs.enhance(old);
  }

  const ANSI = /\x1b\[[0-9;?]*[A-Za-z]/g;

  function terminal(text) {
    return text
      .replace(ANSI, "")
      .split("\n")
      .map((line) => line.slice(line.lastIndexOf("\r") + 1))
      .join("\n");
  }

  /** Streams are shown as they come (text only); anything richer is rendered by the server. */
  function output(d) {
    const el = cellEl(d.cell_id);
    const outs = el && el.querySelector(".outputs");
    if (!outs) {
      refresh(d.cell_id);
      return;
    }
    keepBottom(() => {
      if (d.cleared) outs.replaceChildren();
      if (!d.output) return;
      if (d.output.output_type !== "stream") {
        refresh(d.cell_id);
        return;
      }
      let box = outs.children[d.index];
      if (!box || box.dataset.key !== "live") {
        const fresh = element("div", "output output-stream");
        fresh.dataset.index = String(d.index);
        fresh.dataset.key = "live";
        fresh.append(element("pre", `out live ${d.output.name === "stderr" ? "stderr" : "stdout"}`));
        if (box) outs.replaceChild(fresh, box);
        else outs.appendChild(fresh);
        box = fresh;
      }
      box.firstElementChild.textContent = terminal(String(d.output.text || ""));
    });
  }

  // ------------------------------------------------------------------ the turn

  function liveText(text) {
    keepBottom(() => {
      let bubble = liveEl.querySelector(".live-message .text");
      if (!bubble) {
        const el = element("article", "cell cell-assistant live-message");
        const wrap = element("div", "bubble");
        bubble = element("div", "text plain");
        wrap.append(bubble);
        el.append(wrap);
        liveEl.append(el);
      }
      bubble.append(document.createTextNode(text));
    });
  }

  function clearLive() {
    liveEl.replaceChildren();
  }

  function showTurn() {
    const busy = Boolean(turn);
    const waiting = busy && turn.waiting;
    $("working").hidden = !(busy && !waiting) && !(starting && running.size === 0);
    $("working-text").textContent = busy ? "The agent is working…" : "Starting the cell…";
    $("stop").hidden = !busy && running.size === 0;
    $("ask-box").hidden = !(waiting && waiting.kind === "answer");
    $("approval-box").hidden = !(waiting && waiting.kind === "approval");
    document.body.classList.toggle("turn-running", busy);
    updateSend();
  }

  function setWaiting(waiting) {
    if (!turn) turn = { id: waiting.turn_id, waiting: null };
    turn.waiting = waiting;
    keepBottom(() => {
      showTurn();
      if (waiting.kind === "approval") {
        approvalCode = waiting.code;
        $("approval-code").value = waiting.code;
        approvalLabel();
      }
    });
    $(waiting.kind === "answer" ? "ask-text" : "approve").focus({ preventScroll: true });
  }

  function endTurn() {
    turn = null;
    clearLive();
    showTurn();
    refreshUsage();
    scheduleFiles();
  }

  function showUsage() {
    const total = {
      prompt_tokens: (usageBase.prompt_tokens || 0) + ((turnUsage && turnUsage.prompt_tokens) || 0),
      completion_tokens:
        (usageBase.completion_tokens || 0) + ((turnUsage && turnUsage.completion_tokens) || 0),
      cost:
        usageBase.cost == null && (!turnUsage || turnUsage.cost == null)
          ? null
          : (usageBase.cost || 0) + ((turnUsage && turnUsage.cost) || 0),
    };
    $("usage").textContent = KA.tokens(total);
  }

  async function refreshUsage() {
    try {
      const session = await KA.api("GET", base);
      usageBase = session.usage || usageBase;
      turnUsage = null;
      showUsage();
    } catch (_) {
      /* the totals stay as they were; the next turn tries again */
    }
  }

  // ------------------------------------------------------------------ the event stream

  let source = null;
  let lastId = page.after;

  function connection(state) {
    const el = $("conn");
    el.dataset.state = state;
    el.textContent =
      { live: "live", connecting: "connecting…", reconnecting: "reconnecting…" }[state] ||
      "disconnected";
  }

  /** Whether a cell event belongs to the running turn (a person's cell meanwhile does not). */
  const ofTurn = (d) => Boolean(turn && d.metadata && d.metadata.turn_id === turn.id);

  const handlers = {
    "turn.started": (d) => {
      turn = { id: d.turn_id, waiting: null };
      turnUsage = null;
      showTurn();
    },
    "message.delta": (d) => liveText(d.text),
    "message.retry": (d) =>
      KA.alert(`The model did not answer (${d.error}); trying again (attempt ${d.attempt}).`, "note"),
    "message.completed": (d) => {
      clearLive();
      refresh(d.cell_id);
    },
    "cell.added": (d) => {
      if (d.role === "assistant") clearLive();
      if (ofTurn(d)) turn.waiting = null;
      keepBottom(() => placeholder(d.cell_id, d.role, d.source, false));
      showTurn();
      refresh(d.cell_id);
    },
    "cell.started": (d) => {
      running.add(d.cell_id);
      if (ofTurn(d)) turn.waiting = null;
      keepBottom(() => placeholder(d.cell_id, d.role, d.code, true));
      showTurn();
    },
    "cell.output": output,
    "cell.completed": (d) => {
      running.delete(d.cell_id);
      showTurn();
      refresh(d.cell_id);
      scheduleFiles();
    },
    ask_user: (d) => setWaiting({ kind: "answer", question: d.question, turn_id: d.turn_id }),
    "approval.required": (d) => setWaiting({ kind: "approval", code: d.code, turn_id: d.turn_id }),
    usage: (d) => {
      turnUsage = d;
      showUsage();
    },
    "turn.completed": endTurn,
    "turn.failed": (d) => {
      endTurn();
      if (d.status === "interrupted") KA.alert("Stopped.", "note");
      else KA.alert(`The turn failed: ${d.error || "unknown error"}`);
    },
  };

  function connect() {
    const query = lastId ? `?after=${encodeURIComponent(lastId)}` : "";
    source = new EventSource(`${base}/events${query}`);
    source.onopen = () => connection("live");
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        connection("closed");
        setTimeout(connect, 3000); // the server refused the stream: try again ourselves
      } else {
        connection("reconnecting");
      }
    };
    for (const [type, handle] of Object.entries(handlers)) {
      source.addEventListener(type, (e) => {
        if (e.lastEventId) lastId = e.lastEventId;
        let data;
        try {
          data = JSON.parse(e.data);
        } catch (_) {
          return;
        }
        handle(data);
      });
    }
  }

  // ------------------------------------------------------------------ composer

  function mode() {
    const checked = document.querySelector('input[name="mode"]:checked');
    return (checked || document.querySelector('input[name="mode"]')).value;
  }

  function updateSend() {
    const asking = mode() === "ask";
    $("send").disabled = asking && Boolean(turn);
    $("send").textContent = asking ? "Send" : "Run";
    input.placeholder = asking ? "Ask about your data…" : "Python code to run…";
    input.spellcheck = asking;
    input.classList.toggle("code-input", !asking);
  }

  function grow(area) {
    area.style.height = "auto";
    area.style.height = `${Math.min(area.scrollHeight + 2, window.innerHeight * 0.4)}px`;
  }

  function enterSends(area, form) {
    area.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        form.requestSubmit();
      }
    });
    area.addEventListener("input", () => grow(area));
  }

  enterSends(input, $("composer"));
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => {
      updateSend();
      input.focus();
    });
  }

  $("composer").addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = input.value;
    if (!text.trim()) return;
    if (mode() === "ask") {
      if (turn) return;
      $("send").disabled = true;
      try {
        const answer = await KA.api("POST", `${base}/messages`, { content: text });
        input.value = "";
        grow(input);
        if (!turn) turn = { id: answer.turn_id, waiting: null };
        showTurn();
      } catch (err) {
        KA.alert(err.message);
      } finally {
        updateSend();
      }
      return;
    }
    input.value = "";
    grow(input);
    starting += 1;
    showTurn();
    try {
      await KA.api("POST", `${base}/cells`, { code: text });
    } catch (err) {
      KA.alert(`The code did not run: ${err.message}`);
      if (!input.value) input.value = text;
    } finally {
      starting -= 1;
      showTurn();
    }
  });

  $("stop").addEventListener("click", async () => {
    try {
      await KA.api("POST", `${base}/interrupt`);
    } catch (err) {
      KA.alert(`Could not stop: ${err.message}`);
    }
  });

  enterSends($("ask-text"), $("ask-form"));
  $("ask-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = $("ask-text").value;
    if (!text.trim() || !turn) return;
    try {
      await KA.api("POST", `${base}/turns/${turn.id}/answer`, { text });
      $("ask-text").value = "";
      turn.waiting = null;
      showTurn();
      input.focus();
    } catch (err) {
      KA.alert(`The answer was not sent: ${err.message}`);
    }
  });

  function approvalLabel() {
    const edited = $("approval-code").value !== approvalCode;
    $("approve").textContent = edited ? "Run my edit" : "Approve";
  }

  async function decide(decision) {
    if (!turn) return;
    const body = { decision };
    if (decision === "approve" && $("approval-code").value !== approvalCode) {
      body.decision = "edit";
      body.code = $("approval-code").value;
    }
    try {
      await KA.api("POST", `${base}/turns/${turn.id}/approval`, body);
      turn.waiting = null;
      showTurn();
    } catch (err) {
      KA.alert(`The decision was not sent: ${err.message}`);
    }
  }

  $("approval-code").addEventListener("input", approvalLabel);
  $("approval-code").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      decide("approve");
    }
  });
  $("approve").addEventListener("click", () => decide("approve"));
  $("reject").addEventListener("click", () => decide("reject"));

  const approvalMode = $("approval-mode");
  if (approvalMode) {
    approvalMode.addEventListener("change", async () => {
      try {
        await KA.api("PATCH", base, { approval_mode: approvalMode.checked });
      } catch (err) {
        approvalMode.checked = !approvalMode.checked;
        KA.alert(`Approval mode was not changed: ${err.message}`);
      }
    });
  }

  // ------------------------------------------------------------------ branch

  cellsEl.addEventListener("click", async (e) => {
    const button = e.target.closest("button.branch");
    if (!button) return;
    const cell = button.closest(".cell");
    button.disabled = true;
    button.textContent = "Branching…";
    try {
      const session = await KA.api("POST", `${base}/branch`, { cell_id: cell.dataset.cellId });
      window.location.href = `/sessions/${session.id}`;
    } catch (err) {
      KA.alert(`Could not branch: ${err.message}`);
      button.disabled = false;
      button.textContent = "Branch";
    }
  });

  // ------------------------------------------------------------------ files

  const filesList = $("files");
  let filesTimer = null;

  function openFiles(open) {
    document.body.classList.toggle("files-open", open);
    $("files-toggle").setAttribute("aria-expanded", String(open));
    if (open) loadFiles();
  }

  function scheduleFiles() {
    if (!document.body.classList.contains("files-open")) return;
    clearTimeout(filesTimer);
    filesTimer = setTimeout(loadFiles, 800);
  }

  async function loadFiles() {
    let listing;
    try {
      listing = await KA.api("GET", `${base}/files`);
    } catch (err) {
      filesList.replaceChildren(element("li", "error small", `Files could not be listed: ${err.message}`));
      return;
    }
    const items = listing.files.map((file) => {
      const li = element("li", "file");
      const link = element("a", "", file.path);
      link.href = `${base}/files/${file.path.split("/").map(encodeURIComponent).join("/")}`;
      link.setAttribute("download", file.path.split("/").pop());
      li.append(link, element("span", "muted small", KA.bytes(file.size)));
      return li;
    });
    filesList.replaceChildren(...(items.length ? items : [element("li", "muted small", "No files yet.")]));
  }

  function uploadFile(file) {
    openFiles(true);
    const li = element("li", "upload");
    const name = element("span", "name", file.name);
    const bar = element("progress");
    bar.max = 100;
    bar.value = 0;
    const status = element("span", "muted small", "uploading…");
    li.append(name, bar, status);
    $("uploads").append(li);
    const fail = (message) => {
      li.classList.add("failed");
      status.className = "error small";
      status.textContent = `failed: ${message}`;
      bar.remove();
      const close = element("button", "link small", "dismiss");
      close.type = "button";
      close.addEventListener("click", () => li.remove());
      li.append(close);
    };
    if (page.upload_limit && file.size > page.upload_limit) {
      fail(`larger than the upload limit (${KA.bytes(page.upload_limit)})`);
      return;
    }
    KA.upload(`${base}/files`, file, (pct) => {
      bar.value = pct;
    })
      .then(() => {
        li.classList.add("done");
        bar.value = 100;
        status.textContent = "uploaded";
        setTimeout(() => li.remove(), 4000);
        loadFiles();
      })
      .catch((err) => fail(err.message));
  }

  $("file-input").addEventListener("change", (e) => {
    for (const file of e.target.files) uploadFile(file);
    e.target.value = "";
  });
  $("attach").addEventListener("click", () => $("file-input").click());
  $("files-toggle").addEventListener("click", () =>
    openFiles(!document.body.classList.contains("files-open")),
  );
  $("files-close").addEventListener("click", () => openFiles(false));
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && window.matchMedia("(max-width: 1099px)").matches) openFiles(false);
  });

  let dragDepth = 0;
  const hasFiles = (e) => e.dataTransfer && [...e.dataTransfer.types].includes("Files");
  window.addEventListener("dragenter", (e) => {
    if (!hasFiles(e)) return;
    dragDepth += 1;
    $("drop-overlay").hidden = false;
  });
  window.addEventListener("dragleave", (e) => {
    if (!hasFiles(e)) return;
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) $("drop-overlay").hidden = true;
  });
  window.addEventListener("dragover", (e) => {
    if (hasFiles(e)) e.preventDefault();
  });
  window.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth = 0;
    $("drop-overlay").hidden = true;
    for (const file of e.dataTransfer.files) uploadFile(file);
  });

  // ------------------------------------------------------------------ start

  KAOutputs.enhance(document);
  if (turn && turn.waiting) setWaiting(Object.assign({ turn_id: turn.id }, turn.waiting));
  showTurn();
  showUsage();
  openFiles(window.matchMedia("(min-width: 1100px)").matches);
  window.scrollTo(0, document.documentElement.scrollHeight);
  connect();
})();
