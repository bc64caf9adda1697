/* What server-rendered outputs need in the browser: plotly charts drawn, HTML frames sized,
   long outputs unfolded on request. `KAOutputs.enhance(root)` is idempotent. */
"use strict";

window.KAOutputs = (() => {
  const FRAME_MAX = 480; // px an HTML output may take before "show all"

  function drawPlots(root) {
    for (const box of root.querySelectorAll(".plotly-output:not([data-drawn])")) {
      box.dataset.drawn = "1";
      const target = box.querySelector(".plotly-target");
      let figure;
      try {
        figure = JSON.parse(box.querySelector(".plotly-figure").textContent);
      } catch (e) {
        target.textContent = "This chart's data could not be read.";
        continue;
      }
      if (!window.Plotly) {
        target.textContent = "plotly.js did not load, so this chart cannot be drawn.";
        continue;
      }
      const layout = Object.assign({}, figure.layout || {});
      const config = Object.assign({ responsive: true, displaylogo: false }, figure.config || {});
      window.Plotly.newPlot(target, figure.data || [], layout, config).catch((e) => {
        target.textContent = `The chart could not be drawn: ${e.message}`;
      });
    }
  }

  function frameFor(source) {
    for (const frame of document.querySelectorAll("iframe.html-frame")) {
      if (frame.contentWindow === source) return frame;
    }
    return null;
  }

  window.addEventListener("message", (e) => {
    const data = e.data;
    if (!data || typeof data.kernelagentFrameHeight !== "number") return;
    const frame = frameFor(e.source);
    if (!frame) return;
    const height = Math.max(20, Math.min(Math.ceil(data.kernelagentFrameHeight), 20000));
    const box = frame.closest(".frame-box");
    const expanded = box && box.classList.contains("expanded");
    frame.style.height = `${expanded ? height : Math.min(height, FRAME_MAX)}px`;
    const more = box && box.querySelector(".show-all");
    if (more) more.hidden = expanded || height <= FRAME_MAX;
    frame.dataset.height = String(height);
  });

  document.addEventListener("click", (e) => {
    const button = e.target.closest(".show-all");
    if (!button) return;
    const fold = button.closest(".fold, .frame-box");
    if (!fold) return;
    if (fold.classList.contains("frame-box")) {
      fold.classList.add("expanded");
      const frame = fold.querySelector("iframe");
      if (frame.dataset.height) frame.style.height = `${frame.dataset.height}px`;
    } else {
      fold.classList.remove("is-folded");
    }
    button.hidden = true;
  });

  /** Ask each frame for its height: frames that loaded before this script heard nobody. */
  function sizeFrames(root) {
    for (const frame of root.querySelectorAll("iframe.html-frame:not([data-asked])")) {
      frame.dataset.asked = "1";
      const ask = () => frame.contentWindow.postMessage({ kernelagentFrameQuery: 1 }, "*");
      frame.addEventListener("load", ask);
      if (frame.contentWindow) ask();
    }
  }

  function enhance(root) {
    drawPlots(root || document);
    sizeFrames(root || document);
  }

  return { enhance };
})();
