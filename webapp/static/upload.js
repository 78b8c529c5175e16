// Drag-and-drop and batch upload with per-file progress.
// Each file is sent in its own request (so one bad file never sinks the batch),
// at most two at a time, asking for JSON. Without JavaScript the form still posts.
"use strict";

(function () {
  var MAX_PARALLEL = 2;

  function init() {
    var form = document.getElementById("upload-form");
    var input = document.getElementById("files");
    var zone = document.getElementById("drop-zone");
    var queue = document.getElementById("queue");
    var list = document.getElementById("queue-list");
    if (!form || !input || !zone) { return; }
    var csrf = form.querySelector("input[name=csrf_token]").value;
    var pending = [];
    var running = 0;

    function addItem(file) {
      var li = document.createElement("li");
      li.className = "queue-item";
      var name = document.createElement("span");
      name.className = "file-name";
      name.textContent = file.name;
      var bar = document.createElement("progress");
      bar.max = 100;
      bar.value = 0;
      var state = document.createElement("span");
      state.className = "state";
      state.textContent = "waiting";
      li.appendChild(name);
      li.appendChild(bar);
      li.appendChild(state);
      list.appendChild(li);
      return { file: file, li: li, bar: bar, state: state };
    }

    function finish(item, ok, node) {
      item.li.classList.add(ok ? "done" : "failed");
      // A refused or not-graded file must not look like a success.
      item.bar.classList.add(ok ? "bar-done" : "bar-failed");
      item.state.className = "state " + (ok ? "state-done" : "state-error");
      item.state.textContent = "";
      item.state.appendChild(node);
      running -= 1;
      pump();
    }

    function link(href, text) {
      var a = document.createElement("a");
      a.href = href;
      a.textContent = text;
      return a;
    }

    function send(item) {
      running += 1;
      var data = new FormData();
      data.append("csrf_token", csrf);
      data.append("files", item.file, item.file.name);
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.setRequestHeader("X-CSRFToken", csrf);
      xhr.upload.addEventListener("progress", function (e) {
        if (e.lengthComputable) { item.bar.value = Math.round((e.loaded / e.total) * 100); }
        item.state.textContent = "uploading";
      });
      xhr.upload.addEventListener("load", function () {
        // Upload finished; the model is working: show an indeterminate bar.
        item.bar.removeAttribute("value");
        item.state.textContent = "grading";
      });
      xhr.addEventListener("load", function () {
        item.bar.value = 100;
        var body = null;
        try { body = JSON.parse(xhr.responseText); } catch (err) { body = null; }
        if (xhr.status === 201 && body && body.graded === false) {
          // Stored, but the model flagged the image: there is no grade to show.
          finish(item, false, link(body.result_url,
            body.not_graded_reason || "Not graded: the model cannot grade this image"));
        } else if (xhr.status === 201 && body) {
          var text = "grade " + body.grade + " " + body.grade_name +
            " (" + Math.round(body.confidence * 100) + "%)";
          finish(item, true, link(body.result_url, text));
        } else if (xhr.status === 503 && body && body.prediction) {
          finish(item, false, link(body.prediction.result_url,
            "model server unavailable: kept as #" + body.prediction.id + ", retry from history"));
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

    function enqueue(files) {
      if (!files || !files.length) { return; }
      queue.hidden = false;
      for (var i = 0; i < files.length; i++) { pending.push(addItem(files[i])); }
      pump();
    }

    form.addEventListener("submit", function (e) {
      e.preventDefault();
      enqueue(input.files);
      input.value = "";
    });
    ["dragenter", "dragover"].forEach(function (type) {
      zone.addEventListener(type, function (e) { e.preventDefault(); zone.classList.add("dragover"); });
    });
    ["dragleave", "drop"].forEach(function (type) {
      zone.addEventListener(type, function (e) { e.preventDefault(); zone.classList.remove("dragover"); });
    });
    zone.addEventListener("drop", function (e) { enqueue(e.dataTransfer.files); });
  }

  document.addEventListener("DOMContentLoaded", init);
}());
