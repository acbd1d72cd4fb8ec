// Tables wider than the screen scroll in their own box (.table-scroll); this says so. Each box
// gets data-more="left", "right" or "left right" while there is more of the table that way, and
// the CSS fades that edge, so a reader on a phone sees the table goes on. Checked once a frame
// at most: on load, resize, a box's own scroll, and after htmx swaps and websocket pushes.
(function () {
  "use strict";
  var queued = false;
  function mark(box) {
    var more = [];
    var max = box.scrollWidth - box.clientWidth;
    if (max > 1) {
      if (box.scrollLeft > 1) more.push("left");
      if (box.scrollLeft < max - 1) more.push("right");
    }
    var value = more.join(" ");
    if ((box.getAttribute("data-more") || "") !== value) {
      if (value) box.setAttribute("data-more", value);
      else box.removeAttribute("data-more");
    }
  }
  function markAll() {
    queued = false;
    document.querySelectorAll(".table-scroll").forEach(mark);
  }
  function soon() {
    if (!queued) { queued = true; requestAnimationFrame(markAll); }
  }
  document.addEventListener("DOMContentLoaded", soon);
  window.addEventListener("resize", soon);
  document.addEventListener("scroll", function (e) {
    var box = e.target;
    if (box && box.classList && box.classList.contains("table-scroll")) mark(box);
  }, true);  // scroll events do not bubble: caught on the way down
  document.addEventListener("htmx:afterSettle", soon);
  document.addEventListener("htmx:wsAfterMessage", soon);
  window.flowscopeScroll = { mark: markAll };
})();
