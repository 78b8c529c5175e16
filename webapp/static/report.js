// Print button of the report page (kept out of the HTML: no inline scripts under the CSP).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var button = document.getElementById("print-button");
  if (button) {
    button.addEventListener("click", function () { window.print(); });
  }
});
