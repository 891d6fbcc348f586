// The console's map: Leaflet (api/static/vendor/leaflet, vendored from npm by
// deploy/console-vendor/vendor.sh), no request to any other server unless a tile server is
// configured (GET /v1/map). Layers, bottom to top, each in its own pane and SVG:
//   base     the tile server's streets, or (none configured, or it does not answer) the district
//            and neighbourhood polygons filled as an offline map
//   areas    the district and neighbourhood outlines (always; filled only on the offline base)
//   outages  open outage alerts: a mass outage's neighbourhoods shaded (its `areas`), a ring at each
//   lamps    one dot per lamp, coloured by state (blinking lamps larger and on top)
//   walkers  residents on a walk
//   cameras  the CCTV cameras near the selected SOS (GET /v1/alerts/{id}/cameras): green when they
//            look towards the resident, grey when they face away, hollow when the register does
//            not say; a popup with the camera's number, distance, facing and stream link
//   sos      open SOS alerts (pulsing ring and core) and the selected alert's track, on top
// The layer control (top right) switches the base and shows or hides each overlay.
"use strict";

const MapView = (() => {
  const PANES = [["areas", 380], ["outages", 420], ["lamps", 440], ["walkers", 460], ["cameras", 470], ["sos", 480]];
  const LAMP_Z = { offline: 0, online: 1, fault: 2, brightened: 3, blinking: 4 }; // blinking on top
  const OUTAGE_KINDS = new Set(["mass_outage", "power_loss", "device_offline"]);
  const DONE = new Set(["resolved", "cancelled"]);
  // After this many failed tiles with none loaded, the tile server counts as unreachable.
  const TILE_FAILURES = 4;
  const M = {
    map: null, home: null, renderers: {}, layers: {}, bases: {}, control: null, tiles: null,
    tileLoads: 0, tileErrors: 0, lamps: new Map(), dongs: new Map(), base: "offline",
  };

  const label = (key, ko, en) => `<span data-layer="${key}" data-ko="${ko}" data-en="${en}">${ko}</span>`;

  function setBase(name) {
    M.base = name;
    M.map.getContainer().dataset.base = name;
  }

  // tiles: {url_template, attribution, max_zoom} or null. areas: the districts' GeoJSON, mine:
  // the operator's district codes (null: all). dongs: the neighbourhoods' GeoJSON or null.
  function init(el, tiles, areas, mine, dongs, lang) {
    // A map container never scrolls (focus or scrollIntoView could shift it under Leaflet's panes).
    el.addEventListener("scroll", () => { el.scrollTop = 0; el.scrollLeft = 0; });
    const map = L.map(el, { zoomControl: true, keyboard: true, attributionControl: true, zoomSnap: 0.25, minZoom: 9 });
    M.map = map;
    PANES.forEach(([name, z]) => {
      const pane = map.createPane(name);
      pane.style.zIndex = String(z);
      pane.id = "map-" + name;
      M.renderers[name] = L.svg({ pane: name, padding: 0.5 });
      M.layers[name] = L.layerGroup();
    });
    const inMine = (code) => !mine || mine.includes(code);
    const areaLayer = L.geoJSON(areas, {
      pane: "areas", renderer: M.renderers.areas, interactive: false,
      style: (f) => ({ className: "area" + (inMine(f.properties.code) ? " mine" : "") }),
    });
    M.layers.areas.addLayer(areaLayer);
    if (dongs) {
      dongs.features.forEach((f) => M.dongs.set(f.properties.code, f));
      M.layers.areas.addLayer(L.geoJSON(dongs, { pane: "areas", renderer: M.renderers.areas, interactive: false, style: { className: "dong" } }));
    }
    M.layers.areas.addTo(map);
    // The offline base adds nothing of its own: the areas pane fills the polygons when it is chosen.
    M.bases.offline = L.layerGroup([], { attribution: "KOSTAT boundaries (southkorea/seoul-maps)" });
    const bases = {};
    if (tiles) {
      M.tiles = L.tileLayer(tiles.url_template, {
        attribution: tiles.attribution, maxZoom: tiles.max_zoom, maxNativeZoom: tiles.max_zoom,
        crossOrigin: false, referrerPolicy: "no-referrer",
      });
      M.tiles.on("tileload", () => { M.tileLoads++; M.map.getContainer().dataset.tiles = "loaded"; });
      M.tiles.on("tileerror", () => {
        M.tileErrors++;
        // No tile ever came: the server is unreachable (or refuses us); the offline map takes over.
        if (M.tileLoads === 0 && M.tileErrors >= TILE_FAILURES && map.hasLayer(M.tiles)) {
          map.removeLayer(M.tiles);
          map.addLayer(M.bases.offline);
          M.map.getContainer().dataset.tiles = "unreachable";
        }
      });
      bases[label("tiles", "거리 지도", "Street map")] = M.tiles;
    }
    bases[label("offline", "구·동 경계 (오프라인)", "Districts (offline)")] = M.bases.offline;
    const overlays = {};
    overlays[label("outages", "정전", "Outages")] = M.layers.outages;
    overlays[label("lamps", "보안등", "Lamps")] = M.layers.lamps;
    overlays[label("walkers", "보행자", "Walkers")] = M.layers.walkers;
    overlays[label("cameras", "CCTV", "CCTV")] = M.layers.cameras;
    overlays[label("sos", "SOS", "SOS")] = M.layers.sos;
    ["outages", "lamps", "walkers", "cameras", "sos"].forEach((k) => M.layers[k].addTo(map));
    map.on("overlayadd", tagAll);
    map.on("baselayerchange", (e) => setBase(e.layer === M.tiles ? "tiles" : "offline"));
    (M.tiles || M.bases.offline).addTo(map);
    setBase(M.tiles ? "tiles" : "offline");
    M.control = L.control.layers(bases, overlays, { collapsed: false, position: "topright" }).addTo(map);
    const shown = L.geoJSON({ type: "FeatureCollection", features: areas.features.filter((f) => inMine(f.properties.code)) });
    M.home = shown.getBounds();
    map.fitBounds(M.home, { padding: [10, 10] });
    relabel(lang);
    return map;
  }

  // The layer control's names follow the console's language (its spans carry data-ko/data-en).
  function relabel(lang) {
    if (!M.map) return;
    M.map.getContainer().querySelectorAll("[data-layer]").forEach((el) => { el.textContent = el.dataset[lang]; });
  }

  function destroy() {
    if (M.map) M.map.remove();
    Object.assign(M, { map: null, home: null, renderers: {}, layers: {}, bases: {}, control: null, tiles: null, tileLoads: 0, tileErrors: 0, lamps: new Map(), dongs: new Map() });
  }

  function home() { if (M.map && M.home) M.map.fitBounds(M.home, { padding: [10, 10] }); }

  // A box of about 900 m x 900 m around a point (an alert's street block).
  function focus(lat, lon) {
    if (M.map) M.map.fitBounds([[lat - 0.004, lon - 0.005], [lat + 0.004, lon + 0.005]]);
  }

  // The whole of an outage's neighbourhoods; false when the map does not have their polygons.
  function focusAreas(codes) {
    const found = codes.map((c) => M.dongs.get(c));
    if (!M.map || !found.length || found.some((f) => !f)) return false;
    M.map.fitBounds(L.geoJSON({ type: "FeatureCollection", features: found }).getBounds(), { padding: [20, 20] });
    return true;
  }

  function zoomBy(delta) { if (M.map) M.map.setZoom(M.map.getZoom() + delta); }

  function lampClass(state) { return "leaflet-interactive lamp " + state; }

  // features: GET /v1/lamps' GeoJSON features. Markers are kept and updated in place.
  function setLamps(features, onClick) {
    if (!M.map) return;
    const seen = new Set();
    const ordered = [...features].filter((f) => f.geometry).sort((p, q) => (LAMP_Z[p.properties.state] ?? 1) - (LAMP_Z[q.properties.state] ?? 1));
    ordered.forEach((f) => {
      const [lon, lat] = f.geometry.coordinates, state = f.properties.state;
      seen.add(f.id);
      let m = M.lamps.get(f.id);
      if (!m) {
        m = L.circleMarker([lat, lon], { pane: "lamps", renderer: M.renderers.lamps, radius: 4, className: lampClass(state), stroke: false, fillOpacity: 1 });
        m.on("click", () => onClick(f.id));
        m.addTo(M.layers.lamps);
        M.lamps.set(f.id, m);
        m.state = null;
      } else {
        const at = m.getLatLng();
        if (at.lat !== lat || at.lng !== lon) m.setLatLng([lat, lon]);
      }
      if (m.state !== state) {
        m.state = state;
        m.setRadius(state === "blinking" ? 7 : 4);
        m.options.className = lampClass(state); // for the element drawn when the layer is shown again
        const el = m.getElement();
        if (el) el.setAttribute("class", lampClass(state));
        if (LAMP_Z[state] >= LAMP_Z.brightened && el) m.bringToFront();
      }
      m.tag = { deviceId: f.id };
      tag(m);
    });
    M.lamps.forEach((m, id) => { if (!seen.has(id)) { M.layers.lamps.removeLayer(m); M.lamps.delete(id); } });
  }

  // Markers carry their lamp's or alert's id as data attributes (tests and clicks find them). A
  // hidden layer's markers have no element; Leaflet draws new ones when it is shown again.
  function tag(m) {
    const el = m.getElement && m.getElement();
    if (el && m.tag) Object.entries(m.tag).forEach(([k, v]) => { el.dataset[k] = v; });
  }
  function tagAll() { Object.values(M.layers).forEach((g) => g.eachLayer((l) => { tag(l); if (l.eachLayer) l.eachLayer(tag); })); }

  function setWalkers(walkers) {
    if (!M.map) return;
    M.layers.walkers.clearLayers();
    walkers.forEach((p) => L.circleMarker([p.lat, p.lon], { pane: "walkers", renderer: M.renderers.walkers, radius: 5, className: "walker", stroke: false, fillOpacity: 0.85, interactive: false }).addTo(M.layers.walkers));
  }

  async function dongOf(districtCode, dongCode, fetchDongs) {
    if (!M.dongs.has(dongCode) && districtCode) {
      try { (await fetchDongs(districtCode)).features.forEach((f) => M.dongs.set(f.properties.code, f)); } catch (e) { /* no area, the ring stays */ }
    }
    return M.dongs.get(dongCode);
  }

  // An outage's neighbourhoods (dong codes): its `areas` (a district's outage lists several),
  // else its place's neighbourhood.
  function outageAreas(a) {
    if (a.areas && a.areas.length) return a.areas;
    return a.place && a.place.dong_code ? [a.place.dong_code] : [];
  }

  // The neighbourhoods' names in the console's language (the code when the gazetteer has none),
  // their polygons fetched first when the operator's map does not have them.
  async function areaNames(districtCode, codes, lang, fetchDongs) {
    const found = await Promise.all(codes.map((c) => dongOf(districtCode, c, fetchDongs)));
    return codes.map((code, i) => {
      const p = found[i] ? found[i].properties : null;
      return { code, name: p ? (lang === "ko" ? p.name : p.name_eng || p.name) : code };
    });
  }

  // alerts: the console's alert summaries. SOS (open or being handled) go to the sos layer,
  // outages (mass outage, power loss, device offline) to the outages layer.
  function setAlerts(alerts, onSelect, fetchDongs) {
    if (!M.map) return;
    M.layers.sos.eachLayer((l) => { if (!l.isTrack) M.layers.sos.removeLayer(l); });
    M.layers.outages.clearLayers();
    alerts.filter((a) => a.place && !DONE.has(a.state)).forEach((a) => {
      const at = [a.place.lat, a.place.lon];
      if (a.kind === "sos") {
        L.circleMarker(at, { pane: "sos", renderer: M.renderers.sos, radius: 18, className: "sos-marker", interactive: false }).addTo(M.layers.sos);
        const core = L.circleMarker(at, { pane: "sos", renderer: M.renderers.sos, radius: 7, className: "sos-core", stroke: false, fillOpacity: 1 }).addTo(M.layers.sos);
        core.on("click", () => onSelect(a.id));
        core.tag = { alertId: a.id };
        tag(core);
      } else if (OUTAGE_KINDS.has(a.kind)) {
        // A mass outage shades each of its neighbourhoods (a district's outage: several).
        const district = a.place.district_code || (a.districts || [])[0];
        if (a.kind === "mass_outage") outageAreas(a).forEach((code) => {
          dongOf(district, code, fetchDongs).then((f) => {
            if (!f || DONE.has(a.state) || !M.layers.outages.hasLayer(ring)) return;
            const area = L.geoJSON(f, { pane: "outages", renderer: M.renderers.outages, interactive: false, style: { className: "outage-area" } });
            M.layers.outages.addLayer(area);
            area.eachLayer((l) => { l.tag = { alertId: a.id, dongCode: code }; tag(l); });
            ring.bringToFront();
          });
        });
        const ring = L.circleMarker(at, { pane: "outages", renderer: M.renderers.outages, radius: a.kind === "mass_outage" ? 12 : 6, className: "outage-marker " + a.kind });
        ring.on("click", () => onSelect(a.id));
        ring.bindTooltip(`${a.count > 1 ? "×" + a.count + " " : ""}${a.place_text_ko || ""}`, { pane: "tooltipPane" });
        ring.addTo(M.layers.outages);
        ring.tag = { alertId: a.id, count: String(a.count) };
        tag(ring);
      }
    });
  }

  function setTrack(points) {
    if (!M.map) return;
    M.layers.sos.eachLayer((l) => { if (l.isTrack) M.layers.sos.removeLayer(l); });
    if (!points || points.length < 2) return;
    const line = L.polyline(points.map((p) => [p.lat, p.lon]), { pane: "sos", renderer: M.renderers.sos, className: "track-line", interactive: false });
    line.isTrack = true;
    line.addTo(M.layers.sos);
  }

  // cameras: GET /v1/alerts/{id}/cameras' list (nearest first), or null to clear the layer.
  function setCameras(cameras) {
    if (!M.map) return;
    M.layers.cameras.clearLayers();
    (cameras || []).forEach((c) => {
      const looks = c.looks_towards === true ? "sees" : c.looks_towards === false ? "away" : "unknown";
      const m = L.circleMarker([c.lat, c.lon], { pane: "cameras", renderer: M.renderers.cameras, radius: 6, className: "camera " + looks, fillOpacity: looks === "unknown" ? 0 : 0.9 });
      const box = document.createElement("div");
      box.className = "camera-popup";
      const title = document.createElement("strong");
      title.textContent = c.management_no || c.camera_id;
      const info = document.createElement("div");
      info.textContent = `${Math.round(c.distance_m)} m · ${c.facing || "?"} · ${c.address || ""}`;
      box.append(title, info);
      if (c.stream_url) {
        const a = document.createElement("a");
        a.href = c.stream_url; a.target = "_blank"; a.rel = "noopener noreferrer"; a.className = "camera-stream";
        a.textContent = "▶ stream";
        box.append(a);
      }
      m.bindPopup(box);
      m.tag = { cameraId: c.camera_id, looks };
      m.addTo(M.layers.cameras);
      tag(m);
    });
  }

  return { init, destroy, relabel, home, focus, zoomBy, setLamps, setWalkers, setAlerts, setTrack, setCameras, outageAreas, areaNames, focusAreas, state: M };
})();
