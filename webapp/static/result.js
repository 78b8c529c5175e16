// Heatmap controls of the result page: the overlay is off until asked for, its opacity
// adjustable (kept out of the HTML: no inline scripts under the CSP).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var toggle = document.getElementById("toggle-heatmap");
  var opacity = document.getElementById("heatmap-opacity");
  var overlay = document.getElementById("heatmap-overlay");
  var pair = document.getElementById("viewer-pair");
  if (!toggle || !overlay || !pair) { return; }
  function update() {
    pair.classList.toggle("heatmap-on", toggle.checked);
    overlay.style.opacity = String(Number(opacity.value) / 100);
  }
  toggle.addEventListener("change", update);
  opacity.addEventListener("input", update);
  update();
});
