// The console's only script: parts of a page marked data-refresh="URL" are fetched again
// every 5 s (the health page's live numbers and charts). Pages work without it.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const el of document.querySelectorAll("[data-refresh]")) {
    const url = el.getAttribute("data-refresh");
    setInterval(async () => {
      try {
        // Marked as a refresh: it does not keep an idle session alive.
        const r = await fetch(url, { credentials: "same-origin", cache: "no-store",
                                     headers: { "x-console-refresh": "1" } });
        if (r.ok && !r.redirected) el.innerHTML = await r.text();
      } catch (_) { /* the next round tries again */ }
    }, 5000);
  }
});
