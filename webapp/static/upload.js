// Drag-and-drop and batch upload with a side per file and per-file progress.
// Chosen or dropped files are listed first, each with its side (one click: Left or Right,
// the batch side being the default) and its study reference (the batch's by default);
// "Upload and grade" then sends each file in its own request (so one bad file never sinks
// the batch), at most two at a time, asking for JSON. A file refused for its side or
// reference stays in the list to be corrected and sent again. Without JavaScript the
// form still posts, with the batch side and reference for every file.
"use strict";

(function () {
  var MAX_PARALLEL = 2;
  var SIDES = [["L", "Left"], ["R", "Right"]];

  function init() {
    var form = document.getElementById("upload-form");
    var input = document.getElementById("files");
    var zone = document.getElementById("drop-zone");
    var queue = document.getElementById("queue");
    var list = document.getElementById("queue-list");
    var reference = document.getElementById("study_reference");
    if (!form || !input || !zone) { return; }
    var csrf = form.querySelector("input[name=csrf_token]").value;
    var items = [];
    var pending = [];
    var running = 0;
    var counter = 0;

    function batchSide() {
      var checked = form.querySelector("input[name=side]:checked");
      return checked ? checked.value : "";
    }

    function sideControl(item) {
      var group = document.createElement("span");
      group.className = "side-choice file-side";
      group.setAttribute("role", "radiogroup");
      group.setAttribute("aria-label", "Side of " + item.file.name);
      SIDES.forEach(function (pair) {
        var id = "file-side-" + item.n + "-" + pair[0];
        var radio = document.createElement("input");
        radio.type = "radio";
        radio.name = "file-side-" + item.n;
        radio.value = pair[0];
        radio.id = id;
        radio.addEventListener("change", function () { item.sideTouched = true; });
        var label = document.createElement("label");
        label.htmlFor = id;
        label.textContent = pair[1];
        group.appendChild(radio);
        group.appendChild(label);
        item.radios.push(radio);
      });
      return group;
    }

    function setSide(item, side) {
      item.radios.forEach(function (r) { r.checked = (r.value === side); });
    }

    function chosenSide(item) {
      for (var i = 0; i < item.radios.length; i++) {
        if (item.radios[i].checked) { return item.radios[i].value; }
      }
      return "";
    }

    function setEditable(item, editable) {
      item.radios.forEach(function (r) { r.disabled = !editable; });
      item.ref.disabled = !editable;
    }

    function addItem(file) {
      counter += 1;
      var item = { file: file, n: counter, radios: [], sideTouched: false, refTouched: false, state: "staged" };
      var li = document.createElement("li");
      li.className = "queue-item";
      var name = document.createElement("span");
      name.className = "file-name";
      name.textContent = file.name;
      var ref = document.createElement("input");
      ref.type = "text";
      ref.className = "file-reference";
      ref.maxLength = reference ? reference.maxLength : 64;
      ref.value = reference ? reference.value : "";
      ref.setAttribute("aria-label", "Study reference of " + file.name);
      ref.placeholder = "study reference";
      ref.addEventListener("input", function () { item.refTouched = true; });
      item.ref = ref;
      var bar = document.createElement("progress");
      bar.max = 100;
      bar.value = 0;
      var state = document.createElement("span");
      state.className = "state";
      state.textContent = "ready";
      li.appendChild(name);
      li.appendChild(sideControl(item));
      li.appendChild(ref);
      li.appendChild(bar);
      li.appendChild(state);
      list.appendChild(li);
      item.li = li;
      item.bar = bar;
      item.stateNode = state;
      setSide(item, batchSide());
      items.push(item);
      return item;
    }

    function finish(item, ok, node, fixable) {
      item.li.classList.remove("sending");
      item.li.classList.add(ok ? "done" : "failed");
      // A refused or not-graded file must not look like a success.
      item.bar.classList.add(ok ? "bar-done" : "bar-failed");
      item.stateNode.className = "state " + (ok ? "state-done" : "state-error");
      item.stateNode.textContent = "";
      item.stateNode.appendChild(node);
      // A wrong side or reference can be corrected here and the file sent again.
      item.state = fixable ? "staged" : "finished";
      if (fixable) { item.li.classList.add("needs-fix"); setEditable(item, true); }
      running -= 1;
      pump();
    }

    function link(href, text) {
      var a = document.createElement("a");
      a.href = href;
      a.textContent = text;
      return a;
    }

    function sideNote(body) {
      var names = { L: "left", R: "right" };
      var text = body.side ? names[body.side] + " knee" : "";
      if (body.side_chosen) {
        text += " (from the DICOM file; you chose " + names[body.side_chosen] + ")";
      }
      return text ? text + ": " : "";
    }

    function send(item) {
      running += 1;
      item.state = "sending";
      item.li.classList.remove("failed", "needs-fix");
      item.li.classList.add("sending");
      item.bar.className = "";
      item.stateNode.className = "state";
      setEditable(item, false);
      var data = new FormData();
      data.append("csrf_token", csrf);
      data.append("side", chosenSide(item));
      data.append("study_reference", item.ref.value);
      data.append("files", item.file, item.file.name);
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.setRequestHeader("X-CSRFToken", csrf);
      xhr.upload.addEventListener("progress", function (e) {
        if (e.lengthComputable) { item.bar.value = Math.round((e.loaded / e.total) * 100); }
        item.stateNode.textContent = "uploading";
      });
      xhr.upload.addEventListener("load", function () {
        // Upload finished; the model is working: show an indeterminate bar.
        item.bar.removeAttribute("value");
        item.stateNode.textContent = "grading";
      });
      xhr.addEventListener("load", function () {
        item.bar.value = 100;
        var body = null;
        try { body = JSON.parse(xhr.responseText); } catch (err) { body = null; }
        if (xhr.status === 201 && body && body.graded === false) {
          // Stored, but the model flagged the image: there is no grade to show.
          finish(item, false, link(body.result_url, sideNote(body) +
            (body.not_graded_reason || "Not graded: the model cannot grade this image")));
        } else if (xhr.status === 201 && body) {
          var text = sideNote(body) + "grade " + body.grade + " " + body.grade_name +
            " (" + Math.round(body.confidence * 100) + "%)";
          finish(item, true, link(body.result_url, text));
        } else if (xhr.status === 503 && body && body.prediction) {
          finish(item, false, link(body.prediction.result_url,
            "model server unavailable: kept as #" + body.prediction.id + ", retry from history"));
        } else if (xhr.status === 400 && body && body.field) {
          finish(item, false, document.createTextNode(body.error + " — correct it and upload again"), true);
        } else {
          var message = (body && body.error) ? body.error : ("error " + xhr.status);
          if (xhr.status === 413) { message = "file too large"; }
          finish(item, false, document.createTextNode(message));
        }
      });
      xhr.addEventListener("error", function () {
        finish(item, false, document.createTextNode("network error: the upload did not reach the server"));
      });
      xhr.send(data);
    }

    function pump() {
      while (running < MAX_PARALLEL && pending.length) { send(pending.shift()); }
    }

    function stage(files) {
      if (!files || !files.length) { return; }
      queue.hidden = false;
      for (var i = 0; i < files.length; i++) { addItem(files[i]); }
    }

    // The batch side and reference are every listed file's default until set on the file.
    form.querySelectorAll("input[name=side]").forEach(function (radio) {
      radio.addEventListener("change", function () {
        items.forEach(function (item) {
          if (item.state === "staged" && !item.sideTouched) { setSide(item, batchSide()); }
        });
      });
    });
    if (reference) {
      reference.addEventListener("input", function () {
        items.forEach(function (item) {
          if (item.state === "staged" && !item.refTouched) { item.ref.value = reference.value; }
        });
      });
    }

    input.addEventListener("change", function () {
      stage(input.files);
      input.value = "";
    });
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      stage(input.files);
      input.value = "";
      items.forEach(function (item) {
        if (item.state === "staged") { item.state = "queued"; pending.push(item); }
      });
      pump();
    });
    ["dragenter", "dragover"].forEach(function (type) {
      zone.addEventListener(type, function (e) { e.preventDefault(); zone.classList.add("dragover"); });
    });
    ["dragleave", "drop"].forEach(function (type) {
      zone.addEventListener(type, function (e) { e.preventDefault(); zone.classList.remove("dragover"); });
    });
    zone.addEventListener("drop", function (e) { stage(e.dataTransfer.files); });
  }

  document.addEventListener("DOMContentLoaded", init);
}());
