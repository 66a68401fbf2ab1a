"""Headless Chromium for the page tests: a screenshot and the DOM of a page after it ran for a
while, and a look at the screenshot's pixels.

Chromium runs with a fresh profile and everything that phones home switched off (the test
machines have no internet: without those flags its own connections are refused and it may
hang). ``--virtual-time-budget`` lets the page's timers run ``wait_ms`` of *virtual* time,
which passes faster than real time while no network request is pending, so a page polling
every second shows several samples after a few real seconds.

The pixel check counts *saturated* pixels (plotted lines, drawn in solid colours) inside a
rectangle; axes, grid lines and text are grey, the background white, so they do not count.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from matplotlib import image as mpimg

__all__ = [
    "Box",
    "ChromiumError",
    "Page",
    "PlotArea",
    "body_attribute",
    "capture",
    "chromium_path",
    "coloured_pixels",
    "dump_dom",
    "element_text",
    "plot_areas",
    "screenshot",
]

WINDOW = (1280, 1000)
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--hide-scrollbars",
    "--mute-audio",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
)


class ChromiumError(RuntimeError):
    """Chromium failed, timed out or produced nothing."""


def chromium_path() -> str | None:
    """The Chromium binary (``$CHROMIUM`` if set), or None when it is not installed."""
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", "chromium"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


def _command(url: str, profile: str, wait_ms: int, *action: str) -> list[str]:
    binary = chromium_path()
    if binary is None:
        raise ChromiumError("chromium is not installed (apt-get install chromium)")
    return [
        binary,
        *_FLAGS,
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={wait_ms}",
        *action,
        url,
    ]


def _start(url: str, wait_ms: int, *action: str) -> tuple[subprocess.Popen[bytes], str]:
    profile = tempfile.mkdtemp(prefix="obelisk-chromium-")
    proc = subprocess.Popen(
        _command(url, profile, wait_ms, *action),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # so a timeout can end Chromium's helper processes too
    )
    return proc, profile


def _finish(
    proc: subprocess.Popen[bytes], profile: str, timeout: float, what: str
) -> tuple[bytes, bytes]:
    """Chromium's stdout and stderr once it exited (killed after ``timeout`` seconds)."""
    try:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise ChromiumError(
                f"chromium ({what}) did not finish within {timeout:.0f} s; stderr:\n" + _tail(err)
            ) from None
        if proc.returncode != 0:
            raise ChromiumError(
                f"chromium ({what}) exited with {proc.returncode}; stderr:\n" + _tail(err)
            )
        return out, err
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def _abandon(proc: subprocess.Popen[bytes], profile: str) -> None:
    """End a Chromium run whose result is no longer wanted."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    shutil.rmtree(profile, ignore_errors=True)


def _tail(err: bytes, lines: int = 30) -> str:
    return "\n".join(err.decode(errors="replace").splitlines()[-lines:]) or "(nothing)"


def _limit(wait_ms: int, timeout: float | None) -> float:
    # Virtual time runs ahead of the clock, but a page waiting on the network holds it back.
    return timeout if timeout is not None else 30.0 + wait_ms / 1000


def _check_png(path: Path, err: bytes) -> Path:
    if not path.is_file() or path.stat().st_size == 0:
        raise ChromiumError(f"chromium wrote no screenshot to {path}; stderr:\n" + _tail(err))
    return path


def screenshot(url: str, path: Path, *, wait_ms: int, timeout: float | None = None) -> Path:
    """A PNG of ``url`` (the 1280x1000 window) after ``wait_ms`` of virtual time."""
    path = Path(path).resolve()
    path.unlink(missing_ok=True)
    proc, profile = _start(url, wait_ms, f"--screenshot={path}")
    _, err = _finish(proc, profile, _limit(wait_ms, timeout), "screenshot")
    return _check_png(path, err)


def dump_dom(url: str, *, wait_ms: int, timeout: float | None = None) -> str:
    """The serialized DOM of ``url`` after ``wait_ms`` of virtual time."""
    proc, profile = _start(url, wait_ms, "--dump-dom")
    out, err = _finish(proc, profile, _limit(wait_ms, timeout), "dump-dom")
    dom = out.decode(errors="replace")
    if "<html" not in dom.lower():
        raise ChromiumError("chromium dumped no DOM; stderr:\n" + _tail(err))
    return dom


@dataclass(frozen=True)
class Page:
    """One page seen by Chromium at the same (virtual) age: a screenshot and its DOM."""

    png: Path
    dom: str


def capture(url: str, png: Path, *, wait_ms: int, timeout: float | None = None) -> Page:
    """Screenshot and DOM of ``url``. Chromium does one of ``--screenshot`` / ``--dump-dom``
    per run, so two run side by side (taking about as long as one)."""
    png = Path(png).resolve()
    png.unlink(missing_ok=True)
    limit = _limit(wait_ms, timeout)
    shot, shot_profile = _start(url, wait_ms, f"--screenshot={png}")
    try:
        dom = dump_dom(url, wait_ms=wait_ms, timeout=limit)
    except BaseException:
        _abandon(shot, shot_profile)
        raise
    _, err = _finish(shot, shot_profile, limit, "screenshot")
    return Page(_check_png(png, err), dom)


@dataclass(frozen=True)
class Box:
    """A rectangle in page pixels."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class PlotArea:
    """A chart as the page reports it: its plot rectangle and how many samples it drew."""

    id: str
    box: Box
    points: int


class _Elements(HTMLParser):
    """Attributes of every element (by tag) and the text of every element with an id."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: dict[str, list[str]] = {}
        self._open: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.elements.append((tag, a))
        if tag not in _VOID:
            self._open.append((tag, a.get("id")))
            if "id" in a:
                self.text.setdefault(a["id"], [])

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, id_ in self._open:
            if id_ is not None:
                self.text[id_].append(data)


_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
         "track", "wbr"}  # fmt: skip


def _parse(dom: str) -> _Elements:
    parser = _Elements()
    parser.feed(dom)
    parser.close()
    return parser


def plot_areas(dom: str) -> dict[str, PlotArea]:
    """The charts in a dumped DOM, by id: every ``<canvas data-plot="x,y,w,h"
    data-points="n">`` (the page sets both when it draws)."""
    found: dict[str, PlotArea] = {}
    for tag, a in _parse(dom).elements:
        if tag == "canvas" and "data-plot" in a:
            x, y, w, h = (round(float(n)) for n in a["data-plot"].split(","))
            found[a.get("id", "")] = PlotArea(a.get("id", ""), Box(x, y, w, h),
                                              int(a.get("data-points") or 0))  # fmt: skip
    return found


def body_attribute(dom: str, name: str) -> str | None:
    """An attribute of the dumped DOM's ``<body>``."""
    return next((a.get(name) for tag, a in _parse(dom).elements if tag == "body"), None)


def element_text(dom: str, id_: str) -> str | None:
    """The text inside the element with this id (whitespace collapsed), None without one."""
    parts = _parse(dom).text.get(id_)
    return None if parts is None else " ".join("".join(parts).split())


def _rgb(png: Path) -> np.ndarray:
    pixels = np.asarray(mpimg.imread(png), dtype=np.float64)  # PNG: floats in 0..1
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=2)
    if pixels.max() > 1.0:
        pixels = pixels / 255.0
    return pixels[..., :3]


def coloured_pixels(png: Path, box: Box, *, inset: int = 3, saturation: float = 0.3) -> int:
    """How many clearly coloured pixels (max - min channel above ``saturation``, on 0..1)
    lie inside ``box`` (page pixels) shrunk by ``inset`` on every side, to leave the axes
    out. Page pixels are scaled to the screenshot's (its width over the window's)."""
    rgb = _rgb(png)
    scale = rgb.shape[1] / WINDOW[0]
    y0 = max(0, round((box.y + inset) * scale))
    y1 = min(rgb.shape[0], round((box.y + box.height - inset) * scale))
    x0 = max(0, round((box.x + inset) * scale))
    x1 = min(rgb.shape[1], round((box.x + box.width - inset) * scale))
    if y1 <= y0 or x1 <= x0:
        return 0
    area = rgb[y0:y1, x0:x1]
    chroma = area.max(axis=2) - area.min(axis=2)
    return int((chroma > saturation).sum())
