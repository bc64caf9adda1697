/* Runs inside each sandboxed HTML output (an opaque origin): tells the page its height, when
   it changes and whenever the page asks (the page's listener may start after this runs). */
"use strict";
(function () {
  let last = -1;
  function post(force) {
    const height = Math.ceil(document.documentElement.getBoundingClientRect().height);
    if (force === true || height !== last) {
      last = height;
      parent.postMessage({ kernelagentFrameHeight: height }, "*");
    }
  }
  window.addEventListener("message", (e) => {
    if (e.source === parent && e.data && e.data.kernelagentFrameQuery) post(true);
  });
  if (window.ResizeObserver) new ResizeObserver(post).observe(document.documentElement);
  window.addEventListener("load", post);
  post();
})();
