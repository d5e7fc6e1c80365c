// Progressive niceties only: every page works the same without this file.
(function () {
  "use strict";

  // Ask before a form marked data-confirm is sent.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
      return;
    }
    // One click, one request: a second click while the first is on its way does nothing.
    if (form.dataset.sent === "1") {
      event.preventDefault();
      return;
    }
    form.dataset.sent = "1";
    var buttons = form.querySelectorAll("button[type=submit]");
    for (var i = 0; i < buttons.length; i++) buttons[i].disabled = true;
  });

  // Forms brought back by the browser's back button may be sent again.
  window.addEventListener("pageshow", function () {
    var sent = document.querySelectorAll("form[data-sent]");
    for (var i = 0; i < sent.length; i++) {
      delete sent[i].dataset.sent;
      var buttons = sent[i].querySelectorAll("button[type=submit]");
      for (var j = 0; j < buttons.length; j++) buttons[j].disabled = false;
    }
  });

  // Times are written in UTC; their tooltip also gives the reader's local time.
  var times = document.querySelectorAll("time[datetime]");
  for (var k = 0; k < times.length; k++) {
    var at = new Date(times[k].getAttribute("datetime"));
    if (!isNaN(at.getTime())) {
      times[k].title = times[k].getAttribute("datetime") + " (" + at.toLocaleString() + " local)";
    }
  }
})();

// A page that is waiting for work in the background (a reconciliation
// processing) reloads itself; without this file its Reload link does it.
(function () {
  "use strict";
  var waiting = document.querySelector("[data-reload-after]");
  if (!waiting) return;
  var seconds = parseFloat(waiting.getAttribute("data-reload-after"));
  if (!(seconds > 0)) return;
  function reload() {
    // Not while someone is typing into a form of the page.
    var active = document.activeElement;
    if (active && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName)) {
      window.setTimeout(reload, seconds * 1000);
      return;
    }
    window.location.reload();
  }
  window.setTimeout(reload, seconds * 1000);
})();
