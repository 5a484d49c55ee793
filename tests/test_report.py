"""The HTML report (issue 7): numbers, suppression, robustness, and a real browser.

The browser test drives Debian's chromium over the DevTools protocol on a
pipe (``--remote-debugging-pipe``: NUL-separated JSON on fds 3 and 4), so it
needs nothing beyond the standard library: it records console messages,
exceptions, log entries and every network request, measures each figure in
the live DOM, takes a full-page screenshot and prints to PDF.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import fcntl
import json
import math
import os
import queue
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.report import render_report, write_report
from her2fed.errors import SpecError
from tests.rehearsal import approve

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "report"
EXE = str(Path(sys.executable).parent / "her2fed")
SHOTS = ROOT / "out" / "test-report"  # screenshots and reports kept for people to look at
MONTH = 30.4375

# ---------------------------------------------------------------------------
# a minimal DevTools-protocol client over a pipe (stdlib only)

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str:
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        "chromium is not installed, so the report cannot be checked in a real browser. "
        "Fix: `apt-get install chromium` (Debian), or run `make test`, which installs it.",
        pytrace=False,
    )


@dataclass
class PageRun:
    """What one page load produced in the browser."""

    console: list[dict[str, Any]] = field(default_factory=list)
    exceptions: list[dict[str, Any]] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    figures: list[dict[str, Any]] = field(default_factory=list)
    print_figures: list[dict[str, Any]] = field(default_factory=list)
    screenshot: bytes = b""
    screenshot_small: bytes = b""  # quarter scale, decoded to prove the page is not blank
    pdf: bytes = b""
    text: str = ""

    def errors(self) -> list[str]:
        out = [
            f"console.{c['type']}: {c['args']}"
            for c in self.console
            if c["type"] in ("error", "warning", "assert")
        ]
        out += [f"exception: {e}" for e in self.exceptions]
        out += [
            f"log {e.get('level')}: {e.get('text')} {e.get('url', '')}"
            for e in self.log
            if e.get("level") in ("error", "warning")
        ]
        return out


class Browser:
    """Headless chromium driven over --remote-debugging-pipe."""

    def __init__(self, profile: Path) -> None:
        exe = find_chromium()
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        # chromium reads commands on fd 3 and writes replies on fd 4: a tiny Python
        # trampoline moves our pipe ends there and execs the browser
        hi_r = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 20)
        hi_w = fcntl.fcntl(res_w, fcntl.F_DUPFD, 20)
        os.close(cmd_r)
        os.close(res_w)
        args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--mute-audio",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        trampoline = (
            "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
            "os.close(int(sys.argv[1])); os.close(int(sys.argv[2])); "
            "os.execv(sys.argv[3], sys.argv[3:])"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", trampoline, str(hi_r), str(hi_w), exe, *args],
            pass_fds=(hi_r, hi_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.close(hi_r)
        os.close(hi_w)
        self._out = os.fdopen(cmd_w, "wb", buffering=0)
        self._in = os.fdopen(res_r, "rb", buffering=0)
        self._msgs: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self._stderr: list[bytes] = []
        threading.Thread(target=self._reader, daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for chunk in iter(lambda: self.proc.stderr.read(4096), b""):  # type: ignore[union-attr]
            self._stderr.append(chunk)

    def _reader(self) -> None:
        buf = b""
        while True:
            chunk = self._in.read(1 << 16)
            if not chunk:
                self._msgs.put(None)
                return
            buf += chunk
            while b"\0" in buf:
                msg, buf = buf.split(b"\0", 1)
                self._msgs.put(json.loads(msg))

    def _next(self, deadline: float, what: str) -> dict[str, Any] | None:
        try:
            return self._msgs.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise RuntimeError(f"chromium did not answer {what} in time") from None

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = 15.0,
    ) -> dict[str, Any]:
        self._next_id += 1
        mid = self._next_id
        msg: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._out.write(json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._next(deadline, method)
            if m is None:
                raise RuntimeError(
                    "chromium closed the pipe: "
                    + b"".join(self._stderr).decode(errors="replace")[-2000:]
                )
            if m.get("id") == mid:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                result: dict[str, Any] = m.get("result", {})
                return result
            self.events.append(m)

    def close(self) -> None:
        # the browser may already be gone; all we need is that it stops
        with contextlib.suppress(Exception):
            self.send("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


FIGURE_PROBE = """
(() => {
  const out = [];
  document.querySelectorAll('figure.chart').forEach((fig, i) => {
    const svg = fig.querySelector('svg');
    const r = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    let drawn = 0;
    if (svg) svg.querySelectorAll('.series').forEach(el => {
      const b = el.getBBox();
      if (b.width > 0 || b.height > 0) drawn += 1;
    });
    out.push({
      index: i,
      x: r.left + window.scrollX, y: r.top + window.scrollY,
      width: r.width, height: r.height,
      children: svg ? svg.childElementCount : 0,
      drawn: drawn,
      title: svg && svg.querySelector('title') ? svg.querySelector('title').textContent : '',
      label: svg ? svg.getAttribute('aria-labelledby') || svg.getAttribute('aria-label') || '' : '',
      caption: fig.querySelector('figcaption') ? fig.querySelector('figcaption').textContent : '',
    });
  });
  return JSON.stringify(out);
})()
"""


def load_in_browser(html_path: Path, profile: Path, *, pdf: bool = True) -> PageRun:
    b = Browser(profile)
    run = PageRun()
    try:
        target = b.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = b.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            b.send(f"{domain}.enable", session=s)
        b.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": False},
            session=s,
        )
        url = html_path.resolve().as_uri()
        b.send("Page.navigate", {"url": url}, session=s)
        # poll the page itself: a load event of the initial about:blank could be mistaken
        deadline = time.monotonic() + 20
        while True:
            state = b.send(
                "Runtime.evaluate",
                {"expression": "document.readyState + ' ' + location.href", "returnByValue": True},
                session=s,
            )["result"]["value"]
            if state == f"complete {url}":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"page did not finish loading: {state}")
            time.sleep(0.05)

        def probe() -> list[dict[str, Any]]:
            res = b.send(
                "Runtime.evaluate", {"expression": FIGURE_PROBE, "returnByValue": True}, session=s
            )
            figs: list[dict[str, Any]] = json.loads(res["result"]["value"])
            return figs

        run.figures = probe()
        text = b.send(
            "Runtime.evaluate",
            {"expression": "document.body.innerText", "returnByValue": True},
            session=s,
        )
        run.text = text["result"]["value"]
        size = b.send("Page.getLayoutMetrics", session=s)["cssContentSize"]
        shot = b.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {
                    "x": 0,
                    "y": 0,
                    "width": 1280,
                    "height": min(size["height"], 16000),
                    "scale": 1,
                },
            },
            session=s,
            timeout=30,
        )
        run.screenshot = base64.b64decode(shot["data"])
        small = b.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": 1280, "height": size["height"], "scale": 0.25},
            },
            session=s,
            timeout=30,
        )
        run.screenshot_small = base64.b64decode(small["data"])
        if pdf:
            b.send("Emulation.setEmulatedMedia", {"media": "print"}, session=s)
            run.print_figures = probe()
            printed = b.send("Page.printToPDF", {"printBackground": False}, session=s, timeout=30)
            run.pdf = base64.b64decode(printed["data"])
        time.sleep(0.1)  # let late console/log events arrive
        while True:
            try:
                m = b._msgs.get_nowait()
            except queue.Empty:
                break
            if m is not None:
                b.events.append(m)
    finally:
        b.close()
    for e in b.events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled":
            run.console.append(
                {
                    "type": params.get("type"),
                    "args": [a.get("value", a.get("description")) for a in params.get("args", [])],
                }
            )
        elif method == "Runtime.exceptionThrown":
            run.exceptions.append(params.get("exceptionDetails", {}))
        elif method == "Log.entryAdded":
            run.log.append(params.get("entry", {}))
        elif method == "Network.requestWillBeSent":
            run.requests.append(params.get("request", {}).get("url", ""))
    return run


# ---------------------------------------------------------------------------
# PNG decoding (stdlib) to prove the screenshot is not blank


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB rows of an 8-bit RGB/RGBA PNG (zlib + the five row filters).

    Rows filtered with None/Sub/Up are undone with numpy; Average and Paeth,
    which depend on the pixel to the left, byte by byte.
    """
    width, height = png_size(data)
    pos, idat, ctype = 8, b"", 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            depth, ctype, _, _, interlace = struct.unpack(">BBBBB", chunk[8:13])
            assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    bpp = 3 if ctype == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8)
    stride = width * bpp
    prev = np.zeros(stride, dtype=np.uint8)
    rows: list[bytes] = []
    for y in range(height):
        start = y * (stride + 1)
        ftype = int(raw[start])
        cur = raw[start + 1 : start + 1 + stride].copy()
        if ftype == 1:
            cur = (np.cumsum(cur.reshape(-1, bpp), axis=0, dtype=np.int64) % 256).astype(np.uint8)
            cur = cur.reshape(-1)
        elif ftype == 2:
            cur = cur + prev  # uint8 arithmetic wraps modulo 256, as the filter needs
        elif ftype in (3, 4):
            line, up = bytearray(cur.tobytes()), prev.tobytes()
            for x in range(stride):
                a = line[x - bpp] if x >= bpp else 0
                b = up[x]
                if ftype == 3:
                    line[x] = (line[x] + (a + b) // 2) & 0xFF
                else:
                    c = up[x - bpp] if x >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                    line[x] = (line[x] + pred) & 0xFF
            cur = np.frombuffer(bytes(line), dtype=np.uint8)
        prev = cur
        rgb = cur if bpp == 3 else cur.reshape(-1, 4)[:, :3].reshape(-1)
        rows.append(rgb.tobytes())
    return width, height, rows


def png_array(png: bytes) -> np.ndarray[Any, np.dtype[np.int64]]:
    """The image as one int per pixel (0xRRGGBB), shape (height, width)."""
    width, height, rows = png_pixels(png)
    px = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(height, width, 3).astype(np.int64)
    return (px[..., 0] << 16) | (px[..., 1] << 8) | px[..., 2]


def ink_stats(img: np.ndarray[Any, np.dtype[np.int64]]) -> tuple[int, float]:
    """Distinct colours and the share of pixels that are not white."""
    return int(np.unique(img).size), float((img != 0xFFFFFF).mean()) if img.size else 0.0


# ---------------------------------------------------------------------------
# reading the HTML back


class Page(HTMLParser):
    """The report as a test sees it: data-cell texts, figures, svgs and visible text."""

    def __init__(self, html_text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.cells: dict[str, str] = {}
        self.svgs: list[dict[str, str]] = []
        self.ids: dict[str, str] = {}  # id -> tag
        self.figures = 0
        self.figcaptions = 0
        self.tags: list[str] = []
        self._open: list[tuple[int, str, list[str]]] = []  # depth, key, text parts
        self._depth = 0
        self.feed(html_text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        self._depth += 1
        if "id" in a:
            self.ids[a["id"]] = tag
        if tag == "svg":
            self.svgs.append(a)
        elif tag == "figure":
            self.figures += 1
        elif tag == "figcaption":
            self.figcaptions += 1
        if "data-cell" in a:
            self._open.append((self._depth, a["data-cell"], []))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1][0] == self._depth:
            _, key, parts = self._open.pop()
            assert key not in self.cells, f"duplicate data-cell {key}"
            self.cells[key] = "".join(parts).strip()
        self._depth -= 1

    def handle_data(self, data: str) -> None:
        for _, _, parts in self._open:
            parts.append(data)


# independent formatting: the tests do not use coordinator.reporting.fmt


def months(days: float | None) -> str:
    return "NA" if days is None else f"{days / MONTH:.1f}"


def p3(p: float | None) -> str:
    if p is None:
        return "NA"
    return "<1e-16" if p < 1e-16 else f"{p:.3g}"


def pct_ci(e: dict[str, Any]) -> str:
    if e.get("estimate") is None:
        return "suppressed" if e.get("suppressed") else "NA"
    return f"{100 * e['estimate']:.1f} ({100 * e['lower']:.1f}\u2013{100 * e['upper']:.1f})"


def shown_count(n: float | None, min_cell: int = 5) -> str:
    if n is None:
        return "suppressed"
    return "0" if n == 0 else f"<{min_cell}" if n < min_cell else str(int(n))


# ---------------------------------------------------------------------------
# documents


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return doc


@pytest.fixture(scope="module")
def registry() -> dict[str, Any]:
    return load("registry_results.json")


def sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, cwd=ROOT)


SITES = ("athens", "oslo", "munich")


def run_local(study: Path, sites_dir: Path, out: Path) -> Path:
    args = [a for s in SITES for a in ("--site", f"{s}={sites_dir / s / 'site.toml'}")]
    approve(study, [sites_dir / s / "site.toml" for s in SITES])
    proc = sh(EXE, "local", str(study), *args, "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    return out / "results.json"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """results.json of the generic demo study (GBSG2, mgus2), as tests/test_cli_local.py runs it."""
    out = tmp_path_factory.mktemp("demo")
    made = sh(sys.executable, "examples/generic/make_sites.py", str(out / "sites"))
    assert made.returncode == 0, made.stderr
    return run_local(ROOT / "examples" / "generic" / "study.toml", out / "sites", out / "run")


@pytest.fixture(scope="module")
def her2_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """results.json of the HER2+ registry study on synthetic sites, as `make demo` runs it."""
    out = tmp_path_factory.mktemp("her2")
    spec = "athens:GR:400,oslo:NO:700,munich:DE:600"
    made = sh(EXE, "synth", "--out", str(out / "sites"), "--sites", spec)
    assert made.returncode == 0, made.stderr
    return run_local(ROOT / "examples" / "her2" / "study.toml", out / "sites", out / "run")


def small_km(min_cell: int | None = None) -> dict[str, Any]:
    """Hand-made KM rows whose numbers at risk are known at every month tick."""

    def group(
        time: list[float], n_risk: list[int], n_event: list[int], n_censor: list[int]
    ) -> dict[str, Any]:
        surv, s = [], 1.0
        for r, e in zip(n_risk, n_event, strict=True):
            s *= 1 - e / r
            surv.append(s)
        return {
            "time": time, "n_risk": n_risk, "n_event": n_event, "n_censor": n_censor,
            "surv": surv, "std_err": [0.05] * len(time), "lower": [max(0.0, v - 0.1) for v in surv],
            "upper": [min(1.0, v + 0.1) for v in surv], "median": None, "median_lower": None,
            "median_upper": None, "conf_type": "log", "conf_level": 0.95,
        }  # fmt: skip

    study: dict[str, Any] = {"name": "small", "hash": "sha256:00", "sites": ["a", "b", "c"]}
    if min_cell is not None:
        study["disclosure"] = {"min_cell": min_cell, "suppressed_cells": 0, "actions": []}
    return {
        "study": study,
        "analyses": {
            "km": {
                "kind": "km",
                "pooled": {
                    "groups": {
                        # month ticks 0..4: first row at or after 0, 30.4, 60.9, 91.3, 121.8 d
                        "A": group([30, 60, 90, 150], [12, 10, 6, 3], [1, 2, 1, 1], [1, 2, 2, 2]),
                        # after its last row: 8 - 1 - 7 = 0 left
                        "B": group([30, 60], [8, 6], [1, 0], [1, 6]),
                        # after its last row: 9 - 2 - 4 = 3 left, a small non-zero count
                        "C": group([30], [9], [2], [4]),
                    },
                    "n_dropped": 0,
                },
                "per_site": None,
            }
        },
    }


# ---------------------------------------------------------------------------
# tests: pure rendering


def test_rendering_is_pure_and_deterministic(registry: dict[str, Any]) -> None:
    before = copy.deepcopy(registry)
    a, b = render_report(registry), render_report(registry)
    assert a == b
    assert registry == before  # the document is not touched


def test_every_kind_renders_with_figures_and_tables(registry: dict[str, Any]) -> None:
    html_text = render_report(registry)
    kinds = {e["kind"] for e in registry["analyses"].values()}
    assert kinds == {"km", "nelson_aalen", "logrank", "cif", "cox", "attrition", "pathways"}
    assert "could not be rendered" not in html_text and "not rendered" not in html_text
    for aid, entry in registry["analyses"].items():
        m = re.search(
            rf'<section class="analysis" id="a-{re.escape(aid)}">(.*?)</section>', html_text, re.S
        )
        assert m, aid
        body = m.group(1)
        assert "<table" in body, aid
        if entry["kind"] != "logrank":
            assert "<figure" in body and "<svg" in body, aid
    page = Page(html_text)
    assert page.figures == page.figcaptions == len(page.svgs) >= 12


def test_numbers_equal_results_json(registry: dict[str, Any]) -> None:
    cells = Page(render_report(registry)).cells
    a = registry["analyses"]
    for g, c in a["os_km_hr"]["pooled"]["groups"].items():
        assert cells[f"os_km_hr|median|{g}"] == months(c["median"])
        assert (
            cells[f"os_km_hr|median_ci|{g}"]
            == f"{months(c['median_lower'])}\u2013{months(c['median_upper'])}"
        )
        assert cells[f"os_km_hr|n|{g}"] == str(c["n_risk"][0])
        assert cells[f"os_km_hr|events|{g}"] == str(sum(c["n_event"]))
        assert cells[f"os_km_hr|risk|{g}|0"] == str(c["n_risk"][0])
    for site, sv in a["os_km_hr"]["per_site"].items():
        c = sv["groups"]["POS"]
        want = (
            f"{months(c['median'])} ({months(c['median_lower'])}\u2013{months(c['median_upper'])})"
        )
        assert cells[f"os_km_hr|site_median|{site}|POS"] == want
    cox = a["os_cox"]["pooled"]
    for term in cox["coef"]:
        assert cells[f"os_cox|hr|{term}"] == f"{cox['hr'][term]:.3f}"
        assert (
            cells[f"os_cox|hr_ci|{term}"]
            == f"{cox['hr_lower'][term]:.3f}\u2013{cox['hr_upper'][term]:.3f}"
        )
        assert cells[f"os_cox|p|{term}"] == p3(cox["p"][term])
    assert cells["os_cox|lr_test|stat"] == f"{cox['lr_test']['stat']:.2f}"
    assert cells["os_cox|n_events"] == str(cox["n_events"])
    site, sv = next(iter(a["os_cox"]["per_site"].items()))
    assert cells[f"os_cox|site_hr|{site}|hr_status[NEG]"].startswith(
        f"{sv['hr']['hr_status[NEG]']:.3f} ("
    )
    lr = a["os_logrank_brain"]["pooled"]
    assert cells["os_logrank_brain|chisq"] == f"{lr['chisq']:.2f}"
    assert cells["os_logrank_brain|p"] == p3(lr["p"])
    assert cells["os_logrank_brain|E|yes"] == f"{lr['expected']['yes']:.1f}"
    att = a["attrition"]["pooled"]["groups"]["all"]
    for d in ("A1", "A2", "A3", "A4"):
        for k, est in zip(a["attrition"]["pooled"]["lines"], att[d], strict=True):
            assert cells[f"attrition|all|{d}|{k}"] == pct_ci(est), (d, k)
    for k, n in zip(a["attrition"]["pooled"]["lines"], att["end_states"]["death"], strict=True):
        assert cells[f"attrition|all|death|{k}"] == shown_count(n)
    for t in a["pathways"]["pooled"]["transitions"]:
        key = f"pathways|flow|{t['from_line']}|{t['from']}|{t['to']}"
        assert cells[key] == shown_count(t["count"]), key
    assert cells["study|hash"] == registry["study"]["hash"]


def test_numbers_equal_results_json_of_the_demo(demo: Path) -> None:
    doc = json.loads(demo.read_text())
    cells = Page(render_report(doc)).cells
    a = doc["analyses"]
    for g, c in a["rfs_km_hormon"]["pooled"]["groups"].items():
        assert cells[f"rfs_km_hormon|median|{g}"] == months(c["median"])
    cox = a["rfs_cox"]["pooled"]
    for term, hr in cox["hr"].items():
        assert cells[f"rfs_cox|hr|{term}"] == f"{hr:.3f}"
    for aid in ("rfs_logrank_grade", "rfs_logrank_hormon_by_site"):
        assert cells[f"{aid}|chisq"] == f"{a[aid]['pooled']['chisq']:.2f}"
        assert cells[f"{aid}|df"] == str(a[aid]["pooled"]["df"])


def test_numbers_equal_results_json_of_the_her2_demo(her2_demo: Path) -> None:
    """The registry kinds as the estimators really write them (line '4+', country groups)."""
    doc = json.loads(her2_demo.read_text())
    page = Page(render_report(doc))
    cells = page.cells
    kinds = {e["kind"] for e in doc["analyses"].values()}
    assert {"attrition", "pathways", "km", "cox"} <= kinds
    for aid, entry in doc["analyses"].items():
        if entry["kind"] == "attrition":
            pooled = entry["pooled"]
            for g, gd in pooled["groups"].items():
                for d in ("A1", "A2", "A3", "A4"):
                    for k, est in zip(pooled["lines"], gd[d], strict=True):
                        assert cells[f"{aid}|{g}|{d}|{k}"] == pct_ci(est), (g, d, k)
                for k, n in zip(pooled["lines"], gd["started"], strict=True):
                    assert cells[f"{aid}|{g}|started|{k}"] == shown_count(n)
        elif entry["kind"] == "pathways":
            for t in entry["pooled"]["transitions"]:
                key = f"{aid}|flow|{t['from_line']}|{t['from']}|{t['to']}"
                assert cells[key] == shown_count(t.get("count")), key
        elif entry["kind"] == "km":
            for g, c in entry["pooled"]["groups"].items():
                assert cells[f"{aid}|median|{g}"] == months(c["median"])
    assert "could not be rendered" not in "".join(cells.values())


def test_numbers_at_risk_follow_the_rule_and_hide_small_counts() -> None:
    cells = Page(render_report(small_km())).cells
    risk = {k.split("|", 2)[2]: v for k, v in cells.items() if k.startswith("km|risk|")}
    assert risk == {
        "A|0": "12", "A|1": "10", "A|2": "6", "A|3": "<5", "A|4": "<5",
        "B|0": "8", "B|1": "6", "B|2": "0", "B|3": "0", "B|4": "0",
        "C|0": "9", "C|1": "<5", "C|2": "<5", "C|3": "<5", "C|4": "<5",
    }  # fmt: skip
    # the threshold is the study's, not a constant
    cells10 = Page(render_report(small_km(min_cell=10))).cells
    assert cells10["km|risk|A|0"] == "12" and cells10["km|risk|A|1"] == "10"
    assert cells10["km|risk|A|2"] == "<10" and cells10["km|risk|B|0"] == "<10"
    assert cells10["km|risk|B|2"] == "0"


def test_small_numbers_at_risk_never_shown_in_real_results(registry: dict[str, Any]) -> None:
    cells = Page(render_report(registry)).cells
    risk = {k: v for k, v in cells.items() if "|risk|" in k}
    assert len(risk) > 50
    assert any(v == "<5" for v in risk.values())  # the fixture's tails are small
    for k, v in risk.items():
        assert v in ("0", "<5") or int(v) >= 5, (k, v)


def test_nulls_are_na_and_suppressed_cells_say_so(registry: dict[str, Any]) -> None:
    html_text = render_report(registry)
    cells = Page(html_text).cells
    # a median not reached is null in results.json
    doc = small_km()
    assert Page(render_report(doc)).cells["km|median|A"] == "NA"
    att = registry["analyses"]["attrition"]["pooled"]["groups"]["all"]
    nulls = [
        k
        for k, v in zip(
            registry["analyses"]["attrition"]["pooled"]["lines"],
            att["end_states"]["other"],
            strict=True,
        )
        if v is None
    ]
    assert nulls, "the fixture must have a suppressed cell"
    for k in nulls:
        assert cells[f"attrition|all|other|{k}"] == "suppressed"
    assert cells["attrition|all|A1|4"] == "NA"  # no line after the last one


def test_no_nan_none_or_undefined_anywhere(
    registry: dict[str, Any], demo: Path, her2_demo: Path
) -> None:
    docs = [registry, json.loads(demo.read_text()), json.loads(her2_demo.read_text()), small_km()]
    for doc in docs:
        html_text = render_report(doc)
        text = re.sub(r"<[^>]+>", " ", html_text)  # what a reader sees
        for bad in ("NaN", "None", "undefined", "nan", "inf", "null"):
            assert not re.search(rf"\b{bad}\b", text), bad


def test_unknown_kinds_and_broken_entries_do_not_crash(registry: dict[str, Any]) -> None:
    doc = copy.deepcopy(registry)
    doc["analyses"] = {
        "future": {"kind": "multistate", "pooled": {"whatever": 1}, "per_site": None},
        "broken_km": {
            "kind": "km",
            "pooled": {"groups": {"all": {"time": [30, 60], "n_risk": "x"}}},
        },
        "empty_cif": {"kind": "cif", "pooled": {"groups": {}}},
        "not_a_dict": 42,
        **{k: registry["analyses"][k] for k in ("os_cox",)},
    }
    html_text = render_report(doc)
    assert "Analysis kind &#x27;multistate&#x27; is not rendered" in html_text
    assert html_text.count('class="analysis"') == 5
    assert 'id="a-os_cox"' in html_text and "Hazard ratios" in html_text
    # an empty document still gives a page
    assert "<html" in render_report({"analyses": {}})


def test_single_group_cif_draws_each_cause(demo: Path) -> None:
    doc = json.loads(demo.read_text())
    cif = doc["analyses"]["progression_vs_death"]
    cif["pooled"]["groups"] = {"all": cif["pooled"]["groups"]["F"]}
    doc["analyses"] = {"cr": cif}
    page = Page(render_report(doc))
    assert len(page.svgs) == 1
    assert page.cells["cr|risk|all|0"] == str(cif["pooled"]["groups"]["all"]["n_risk"][0])
    assert "cr|cif|all|2|12" in page.cells


def test_text_from_results_is_escaped(registry: dict[str, Any]) -> None:
    doc = copy.deepcopy(registry)
    doc["study"]["name"] = "<script>alert(1)</script> & co"
    km = doc["analyses"]["os_km_hr"]["pooled"]["groups"]
    km["<img src=x onerror=alert(2)>"] = km.pop("NEG")
    html_text = render_report(doc)
    assert "<script" not in html_text and "<img" not in html_text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html_text


def test_self_contained_and_accessible(registry: dict[str, Any]) -> None:
    html_text = render_report(registry)
    page = Page(html_text)
    assert "script" not in page.tags and "link" not in page.tags and "img" not in page.tags
    urls = re.findall(r"(?:https?:)?//[^\s\"'<>)]+", html_text)
    assert set(urls) <= {"http://www.w3.org/2000/svg"}, set(urls)
    assert "@import" not in html_text and "url(http" not in html_text
    assert "Content-Security-Policy" in html_text and "default-src 'none'" in html_text
    for svg_attrs in page.svgs:
        assert svg_attrs.get("role") == "img"
        t, d = svg_attrs["aria-labelledby"].split()
        assert page.ids[t] == "title" and page.ids[d] == "desc"
    assert "@media print" in html_text and "break-before: page" in html_text


def test_write_report_is_atomic_and_reports_bad_input(
    registry: dict[str, Any], tmp_path: Path
) -> None:
    src = tmp_path / "results.json"
    src.write_text(json.dumps(registry))
    out = tmp_path / "sub" / "report.html"
    out.parent.mkdir()
    out.write_text("old report")
    write_report(src, out)
    assert out.read_text(encoding="utf-8") == render_report(registry)
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]  # no temp file left
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SpecError, match="is not valid JSON"):
        write_report(bad, tmp_path / "x.html")
    with pytest.raises(SpecError, match="file not found"):
        write_report(tmp_path / "missing.json", tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()


def test_heterogeneity_and_ticks_by_hand() -> None:
    from coordinator.reporting import stats

    het = stats.heterogeneity([0.1, 0.3, 0.5], [0.1, 0.1, 0.1])
    assert het is not None
    assert math.isclose(het.q, 8.0) and het.df == 2 and math.isclose(het.i2, 0.75)
    assert math.isclose(het.p, math.exp(-4.0))  # chi-square with 2 df: p = exp(-Q/2)
    assert stats.heterogeneity([0.2], [0.1]) is None
    assert stats.month_ticks(94.6) == ([0, 12, 24, 36, 48, 60, 72, 84], 12.0)
    assert stats.month_ticks(4.9)[1] == 1.0


# ---------------------------------------------------------------------------
# tests: a real browser


def check_in_browser(html_path: Path, name: str, tmp_path: Path) -> PageRun:
    run = load_in_browser(html_path, tmp_path / f"profile-{name}")
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / f"{name}.png").write_bytes(run.screenshot)
    (SHOTS / f"{name}.pdf").write_bytes(run.pdf)
    assert run.errors() == [], run.errors()
    assert [u for u in run.requests if u != html_path.resolve().as_uri()] == []
    n_fig = Page(html_path.read_text(encoding="utf-8")).figures
    assert len(run.figures) == n_fig > 0
    page_img = png_array(run.screenshot_small)  # the whole page at quarter scale
    colours, ink = ink_stats(page_img)
    assert colours >= 50 and ink > 0.03, (colours, ink)
    for fig in run.figures:
        where = f"{name} figure {fig['index']} ({fig['title']})"
        assert fig["width"] > 300 and fig["height"] > 100, where
        assert fig["children"] > 5 and fig["drawn"] >= 1, where
        assert fig["title"] and fig["label"] and fig["caption"], where
        # the pixels where the figure sits were painted, in several colours
        x0, y0 = int(fig["x"] / 4), int(fig["y"] / 4)
        x1, y1 = int((fig["x"] + fig["width"]) / 4), int((fig["y"] + fig["height"]) / 4)
        colours, ink = ink_stats(page_img[y0:y1, x0:x1])
        assert colours >= 8 and ink > 0.02, (where, colours, ink)
    for fig in run.print_figures:  # still drawn when printed
        assert fig["width"] > 200 and fig["drawn"] >= 1, fig["title"]
    assert run.pdf.startswith(b"%PDF") and run.pdf.count(b"/Type /Page") > 3
    width, height = png_size(run.screenshot)
    assert width == 1280 and height > 2000
    assert "Number at risk" in run.text and "NaN" not in run.text and "undefined" not in run.text
    return run


def test_report_renders_in_chromium(
    registry: dict[str, Any], demo: Path, her2_demo: Path, tmp_path: Path
) -> None:
    """Every figure painted, nothing fetched, no console error: fixture and both real demos."""
    reg_html = SHOTS / "registry_report.html"
    SHOTS.mkdir(parents=True, exist_ok=True)
    reg_html.write_text(render_report(registry), encoding="utf-8")
    run = check_in_browser(reg_html, "registry", tmp_path)
    assert len(run.figures) >= 12
    for name, results in (("generic", demo), ("her2", her2_demo)):
        html_path = SHOTS / f"{name}_report.html"
        write_report(results, html_path)
        check_in_browser(html_path, name, tmp_path)


def test_browser_check_catches_a_broken_page(tmp_path: Path) -> None:
    """The harness is not vacuous: a script error, a fetch and an empty figure are caught."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><body><figure class='chart'><svg width='400' height='200'></svg>"
        "<figcaption>x</figcaption></figure><img src='http://127.0.0.1:9/x.png'>"
        "<script>console.error('boom'); undefinedFunction();</script></body></html>"
    )
    run = load_in_browser(bad, tmp_path / "profile", pdf=False)
    errors = " ".join(run.errors())
    assert "boom" in errors and "undefinedFunction" in errors
    assert any(u.startswith("http://127.0.0.1:9/") for u in run.requests)
    assert run.figures[0]["drawn"] == 0 and run.figures[0]["children"] == 0
