// Live updates for the status page: the server-sent events patch the tables the server
// rendered. Values are set as text (never as HTML), so a hostile name stays text.
(function () {
  "use strict";
  var MAX_ENTRIES = 500, MAX_PROBLEMS = 200;

  function text(el, value) { if (el) el.textContent = value == null ? "" : String(value); }

  function prepend(tbodyId, cells, max) {
    var body = document.getElementById(tbodyId);
    if (!body) return;
    var tr = document.createElement("tr");
    cells.forEach(function (c) { var td = document.createElement("td"); text(td, c); tr.appendChild(td); });
    body.insertBefore(tr, body.firstChild);
    while (body.rows.length > max) body.deleteRow(body.rows.length - 1);
  }

  function rowFor(id) {
    var rows = document.querySelectorAll("#fleet-table tbody tr");
    for (var i = 0; i < rows.length; i++) if (rows[i].dataset.id === id) return rows[i];
    return null;
  }

  function state(online) { return online === true ? "online" : online === false ? "offline" : "unknown"; }

  function onRow(r) {
    var tr = rowFor(r.id);
    if (!tr) return;
    var online = tr.querySelector(".c-online");
    text(online, state(r.online));
    if (online) online.className = "c-online " + state(r.online);
    text(tr.querySelector(".c-since"), r.since);
    text(tr.querySelector(".c-reported"), r.reported_at);
    var pos = "";
    if (r.latitude != null && r.longitude != null) {
      pos = r.latitude.toFixed(5) + ", " + r.longitude.toFixed(5);
      tr.dataset.lat = r.latitude; tr.dataset.lon = r.longitude;
      moveMarker(r);
    }
    text(tr.querySelector(".c-pos"), pos);
    text(tr.querySelector(".c-lock"), r.lock);
    text(tr.querySelector(".c-energy"), r.energy);
    text(tr.querySelector(".c-cmd"), r.command);
    tr.className = "changed";
  }

  // The map: every vehicle with a position (Leaflet, vendored): this page's at once, the
  // rest from positions.json.
  var map = null, markers = {};
  function moveMarker(r) {
    if (!map) return;
    var at = [r.latitude, r.longitude], m = markers[r.id];
    if (m) m.setLatLng(at);
    else {
      // A text node, never HTML: Leaflet puts a string tooltip in as markup.
      var label = document.createElement("span");
      label.textContent = r.name || r.id;
      markers[r.id] = L.circleMarker(at, { radius: 6 }).addTo(map).bindTooltip(label);
    }
    // Drawn on a canvas: the count is kept where a test (or a curious user) can read it.
    document.getElementById("map").dataset.markers = Object.keys(markers).length;
  }
  function startMap() {
    var tiles = document.body.dataset.tiles, el = document.getElementById("map");
    if (!tiles || !el || typeof L === "undefined") return;
    map = L.map(el, { preferCanvas: true });
    L.tileLayer(tiles, { maxZoom: 19, attribution: "&copy; OpenStreetMap contributors" }).addTo(map);
    var bounds = [];
    document.querySelectorAll("#fleet-table tbody tr").forEach(function (tr) {
      if (tr.dataset.lat === undefined) return;
      var r = { id: tr.dataset.id, name: tr.querySelector("b") ? tr.querySelector("b").textContent : tr.dataset.id,
                latitude: parseFloat(tr.dataset.lat), longitude: parseFloat(tr.dataset.lon) };
      moveMarker(r); bounds.push([r.latitude, r.longitude]);
    });
    if (bounds.length) map.fitBounds(bounds, { maxZoom: 15, padding: [20, 20] });
    else map.setView([0, 0], 1);
    // Then the whole fleet: every vehicle with a position, not only this page's.
    if (typeof fetch === "undefined") return;
    fetch("positions.json", { credentials: "same-origin" }).then(function (r) {
      return r.ok ? r.json() : [];
    }).then(function (points) {
      var all = [];
      points.forEach(function (p) {
        moveMarker({ id: p[0], name: p[1] || p[0], latitude: p[2], longitude: p[3] });
        all.push([p[2], p[3]]);
      });
      if (!bounds.length && all.length) map.fitBounds(all, { maxZoom: 15, padding: [20, 20] });
    }).catch(function () {});
  }

  function connect() {
    if (typeof EventSource === "undefined") return;
    var ids = [];
    document.querySelectorAll("#fleet-table tbody tr").forEach(function (tr) { ids.push(tr.dataset.id); });
    var live = new EventSource("live?ids=" + encodeURIComponent(ids.join(",")));
    live.addEventListener("row", function (e) { onRow(JSON.parse(e.data)); });
    live.addEventListener("entry", function (e) {
      var x = JSON.parse(e.data);
      prepend("entries", [x.at, x.vehicle, x.kind, x.what, x.detail], MAX_ENTRIES);
    });
    live.addEventListener("problem", function (e) {
      var p = JSON.parse(e.data);
      prepend("problems", [p.at, p.kind, p.peer, p.detail], MAX_PROBLEMS);
    });
    live.addEventListener("status", function (e) {
      JSON.parse(e.data).forEach(function (kv) { text(document.getElementById("s-" + kv[0]), kv[1]); });
    });
    document.documentElement.dataset.live = "connected";
  }

  startMap();
  connect();
})();
