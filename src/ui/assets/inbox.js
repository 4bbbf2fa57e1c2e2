// The inbox's one script. Live: the tenant's event stream (/ui/events); when an approval is
// parked, decided or expired anywhere, the part of the page that shows it is fetched again
// and swapped in (the window's title too, which counts what waits), and the change is
// announced to screen readers. Countdown: the time left of pending approvals is kept current,
// and one entering its last fifth is marked expiring soon, though nothing else happened in the
// tenant to render the page again. The pages work without it.
"use strict";
(function () {
  var region = document.getElementById("live-region");
  var announcer = document.getElementById("announcer");

  function span(ms) {
    var s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    if (s < 86400) {
      var m = Math.floor((s % 3600) / 60);
      return Math.floor(s / 3600) + " h" + (m ? " " + m + " min" : "");
    }
    var h = Math.floor((s % 86400) / 3600);
    return Math.floor(s / 86400) + " d" + (h ? " " + h + " h" : "");
  }

  // The server's clock, not the browser's: the page says what the server rendered it at, and
  // a swap says it again (a laptop a few minutes fast showed "expired" while the approval
  // could still be decided).
  var offset = 0;
  function syncClock(el) {
    var at = el ? Number(el.getAttribute("data-now")) : 0;
    if (at) offset = at - Date.now();
  }
  syncClock(region);

  function tick() {
    var now = Date.now() + offset;
    document.querySelectorAll("[data-expires-at]").forEach(function (el) {
      var left = Date.parse(el.getAttribute("data-expires-at")) - now;
      el.textContent = left > 0 ? span(left) + " left" : "expired";
      if (left <= 0) timeUp();
      var soonAt = Date.parse(el.getAttribute("data-soon-at"));
      var holder = el.closest("tr, dd");
      if (now < soonAt || !holder || holder.querySelector(".soon")) return;
      holder.classList.add("expiring");
      var badge = document.createElement("strong");
      badge.className = "soon";
      badge.textContent = "Expiring soon";
      el.parentNode.appendChild(document.createTextNode(" "));
      el.parentNode.appendChild(badge);
    });
  }
  // At its deadline an approval can no longer be decided, whether or not its expiry has been
  // recorded (and sent to this page) yet: its form stops offering a decision the service
  // would refuse. The reason typed stays, to copy.
  function timeUp() {
    var form = document.querySelector("form.decide");
    if (!form || form.getAttribute("data-time-up")) return;
    form.setAttribute("data-time-up", "true");
    form.querySelectorAll("button").forEach(function (button) { button.disabled = true; });
    var note = document.createElement("p");
    note.className = "notice warning";
    note.id = "time-up";
    note.textContent = "Time is up: this approval expired (an automatic rejection) and can " +
      "no longer be decided.";
    form.insertBefore(note, form.firstChild);
  }

  tick();
  setInterval(tick, 1000);

  if (!region || !window.EventSource) return;

  // A refresh asked for while one runs is queued; it checks only (keeps a detail page's form,
  // and the reason being typed in it) if every call that asked for it checks only.
  var busy = false, again = false, againCheckOnly = true, isStale = false;
  // A refresh that failed (429 at the token's limit of requests, 408, 503) is said and tried
  // again, backing off: it waited for the next event, and in a quiet tenant none came, so a
  // decided approval stayed on the page as waiting.
  var refreshFailed = false, refreshTimer = null, refreshRetryIn = 1000;
  // After a reconnect the stream answers for whatever session the browser holds now: its
  // events are not announced until a refresh has found it is still this page's session.
  var trusted = true;
  // A stream refused for good (the store down, an overloaded instance) while the session
  // holds is opened again, backing off: the page must not go quiet without saying so.
  var reopenWanted = false, reopenTimer = null, retryIn = 1000;
  // `checkOnly`: look whether this page's session still holds, without swapping a detail page
  // whose approval is as it was (its form may hold a reason being typed); one decided or
  // expired meanwhile (while the stream was down) is swapped.
  function refresh(checkOnly) {
    if (isStale) return;
    if (busy) { again = true; againCheckOnly = againCheckOnly && !!checkOnly; return; }
    busy = true;
    // While a refresh runs or is queued (what a test, or a script driving the page, waits out).
    document.body.setAttribute("data-refreshing", "true");
    var focusedId = document.activeElement && document.activeElement.id;
    fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (r) {
        // A link's approval of another tenant than the browser's session now has.
        if (r.headers.get("X-Inbox-Other-Tenant")) { stale(false); return null; }
        if (!r.ok) return otherSessionsError(r);
        // Led to the sign-in page: the session ended (its time is up, or it was signed out).
        if (new URL(r.url).pathname === "/ui/login") { stale(true); return null; }
        return r.text();
      })
      .then(function (html) {
        if (html === null) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("live-region");
        // The cookie is the browser's, not this tab's: after a sign-in to another tenant or as
        // someone else in another tab (or a sign-out), the fetch answers for that session.
        // Its page must not be swapped into this one, under this one's header.
        if (!fresh || !sameSession(fresh)) {
          stale(false);
          return;
        }
        trusted = true;
        refreshFailed = false;
        refreshRetryIn = 1000;
        clearTimeout(refreshTimer);
        refreshTimer = null;
        if (source && source.readyState === EventSource.OPEN) paused(false);
        syncClock(fresh);
        if (checkOnly && region.getAttribute("data-live") === "detail" &&
            fresh.getAttribute("data-status") === region.getAttribute("data-status")) {
          return;
        }
        region.innerHTML = fresh.innerHTML;
        region.setAttribute("data-status", fresh.getAttribute("data-status") || "");
        region.setAttribute("data-now", fresh.getAttribute("data-now") || "");
        document.title = doc.title;
        tick();
        var refocus = focusedId && document.getElementById(focusedId);
        if (refocus) refocus.focus();
      })
      .catch(function (status) {
        refreshFailed = true;
        // Tried again only when waiting can mend it (a network error, 408, 429, 5xx from an
        // outage); a 404 (the approval dropped by retention) or a 400 would fail forever, and
        // the notice says so rather than promise a retry.
        var passing = typeof status !== "number" || status === 408 || status === 429 ||
          status === 502 || status === 503 || status === 504;
        paused(true, passing ? null : status);
        if (passing && !refreshTimer && !isStale) {
          refreshTimer = setTimeout(function () {
            refreshTimer = null;
            refresh(checkOnly);
          }, refreshRetryIn);
          refreshRetryIn = Math.min(refreshRetryIn * 2, 30000);
        }
      })
      .then(function () {
        busy = false;
        if (again) {
          var only = againCheckOnly;
          again = false;
          againCheckOnly = true;
          refresh(only);
        }
        else if (reopenWanted) reopen();
        if (!busy) document.body.removeAttribute("data-refreshing");
      });
  }

  function reopen() {
    reopenWanted = false;
    if (isStale || reopenTimer) return;
    reopenTimer = setTimeout(function () { reopenTimer = null; connect(); }, retryIn);
    retryIn = Math.min(retryIn * 2, 30000);
  }

  // A failed answer is this page's failure only if it is this page's session's: a detail page
  // opened from the list (its address names no tenant) whose browser signed in to another
  // tenant gets that tenant's 404, and said "live updates stopped (404)" with its form live.
  // Resolves to null (the page is stale) or rejects with the status.
  function otherSessionsError(r) {
    var status = r.status;
    return r.text().then(function (html) {
      var page = new DOMParser().parseFromString(html, "text/html").getElementById("error-page");
      if (page && page.hasAttribute("data-tenant") && !sameSession(page)) {
        stale(false);
        return null;
      }
      return Promise.reject(status);
    }, function () { return Promise.reject(status); });
  }

  function sameSession(fresh) {
    return ["data-tenant", "data-subject"].every(function (name) {
      return fresh.getAttribute(name) === region.getAttribute(name);
    });
  }

  var source;
  // `ended`: this page's session ended; otherwise the browser now holds another session.
  function stale(ended) {
    isStale = true;
    if (source) source.close();
    clearTimeout(reopenTimer);
    clearTimeout(refreshTimer);
    clearTimeout(pauseTimer);
    paused(false);
    if (document.getElementById("stale-notice")) return;
    var notice = document.createElement("p");
    notice.id = "stale-notice";
    notice.className = "notice warning";
    notice.setAttribute("role", "alert");
    notice.textContent = ended
      ? "This page is no longer live: your session has ended (its time is up, or you " +
        "signed out). Reload to sign in again."
      : "This page is no longer live: this browser signed in elsewhere (another tenant or " +
        "reviewer, in another tab). Reload to see what your current session may see.";
    region.parentNode.insertBefore(notice, region);
  }

  // Says so while the page is not following; gone once the stream is back.
  // `stoppedBy`: the HTTP status that ended live updates for good (nothing is tried again).
  function paused(on, stoppedBy) {
    var notice = document.getElementById("paused-notice");
    if (!on) { if (notice) notice.remove(); return; }
    if (!notice) {
      notice = document.createElement("p");
      notice.id = "paused-notice";
      notice.className = "notice warning";
      notice.setAttribute("role", "status");
      region.parentNode.insertBefore(notice, region);
    }
    // A stop for good is not taken back by a later "paused" (the stream failing too).
    if (!stoppedBy && notice.getAttribute("data-stopped")) return;
    if (stoppedBy) notice.setAttribute("data-stopped", "true");
    notice.textContent = stoppedBy
      ? "Live updates stopped: this page could not be read again (the service answered " +
        stoppedBy + "). Reload it to see where things stand."
      : "Live updates are paused: the service did not answer. Trying again; what you see " +
        "may be out of date.";
  }

  // A list filtered by agent reads up to 5 pages of the tenant to fill one: it is fetched
  // again only for an event that can change it (a parking of that agent's; a decision or
  // expiry of a row it shows, while it lists pending approvals), not for every event of a
  // busy tenant.
  // A parking never changes a list of decided or expired approvals: such a page (on Temporal
  // each fetch reads the tenant's whole history) is not fetched again for every arrival.
  function concerns(kind, event) {
    if (kind === "parked" && region.getAttribute("data-status") !== "pending") return false;
    var agent = region.getAttribute("data-agent");
    if (!agent) return true;
    if (kind === "parked") return !!event.details && event.details.agent_id === agent;
    if (region.getAttribute("data-status") !== "pending") return true;
    return !!document.getElementById("approval-" + event.approval_id);
  }

  function describe(kind, event) {
    var id = event.approval_id;
    if (kind === "parked") return "New approval waiting: " + id + ".";
    if (kind === "expired") return "Approval " + id + " expired.";
    return "Approval " + id + " was " + event.kind + " by " + event.actor + ".";
  }

  // A stream that ended (its session signed out, an instance restarted) reconnects by itself,
  // with whatever cookie the browser holds then: look again at once, so a page whose session
  // ended says so, and one whose session goes on shows what it missed. So does the first
  // stream: it starts at "now", and what happened between the page's reading and its opening
  // (a moment on a fast link, longer on a slow one or across a restart) was never sent to it.
  var pauseTimer = null;
  function connect() {
    source = new EventSource("/ui/events");
    // The stream's state and the last event it brought, on the page: what a test (or a script
    // driving the page) waits for rather than guessing at the stream's timing.
    source.addEventListener("open", function () {
      document.body.setAttribute("data-stream-open", "true");
      retryIn = 1000;
      clearTimeout(pauseTimer);
      pauseTimer = null;
      if (!refreshFailed) paused(false);
      trusted = false;
      refresh(true);
    });
    // Refused for good: a 401 once the session is signed out (the check says so), or a 503
    // (the check finds the session holds, or cannot tell: the stream is opened again).
    source.addEventListener("error", function () {
      document.body.removeAttribute("data-stream-open");
      if (source.readyState !== EventSource.CLOSED) {
        // Reconnecting by itself (a dropped network, an instance restarting): said if it
        // takes a while, not for the moment a stream's normal end takes.
        if (!pauseTimer) {
          pauseTimer = setTimeout(function () { pauseTimer = null; paused(true); }, 3000);
        }
        return;
      }
      paused(true);
      reopenWanted = true;
      refresh(true);
    });
    ["parked", "decided", "expired"].forEach(function (kind) {
      source.addEventListener(kind, function (message) {
        var event;
        try { event = JSON.parse(message.data); } catch (e) { return; }
        document.body.setAttribute("data-last-event", event.approval_id);
        var onDetail = region.getAttribute("data-live") === "detail";
        if (onDetail && event.approval_id !== region.getAttribute("data-id")) return;
        if (!onDetail && !concerns(kind, event)) return;
        // A detail page still holding the reviewer's half-written reason is left alone until
        // its approval is settled.
        if (onDetail && kind === "parked") return;
        if (announcer && trusted) announcer.textContent = describe(kind, event);
        refresh();
      });
    });
  }
  connect();
  document.body.setAttribute("data-live-ready", "true");
})();
