"""Pathfinder: a procedural long-range task (Linsley et al. 2018; the Long Range Arena's
image task, Tay et al. 2020), generated from a seed without any download.

Every image holds the same number of dashed, smoothly curving paths and two marker dots.
The label is 1 ("connected") when the two markers sit on the two ends of one path, 0
when they sit on ends of two different paths. Both classes draw the same number of
paths, dashes and markers, so global statistics (brightness, dash count) say nothing:
a model must follow a path from one marker to the other, across much of the image.

With ``labels=path`` the task is dense: each image comes with a mask of the pixels of
the path that joins the markers (empty when no path does), so a model must trace the
path at full resolution, not only say whether it exists.

Geometry is defined on a canvas of ``CANVAS`` units a side and drawn at ``size`` pixels,
so ``pathfinder:128`` is the ``pathfinder:32`` task at four times the resolution: the
distance a model has to see across grows with it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np

CANVAS = 32.0  # units a side; paths, dashes and markers are measured in these
MARGIN = 2.0  # units kept free along the border
STEP = 0.25  # units between the points a path is traced through
MAX_TURN = 0.5  # radians a unit of length: how sharply a path may curve
KNOT_SPACING = 4.0  # units between the points where a path's curvature is drawn
APART_SLACK = 1.0  # units the markers' distance may miss its target by
CLEARANCE = 2.0  # units between a path's centre line and every other path's
MARKER_RADIUS = 1.25  # units; with a stroke, less than CLEARANCE (see PathfinderSpec.stroke)
MAX_PATH = 1.1  # the longest path, in widths of the room inside the margin
ATTEMPTS = 256  # tries to place a path before the image is started over
RESTARTS = 50  # images started over before a spec is called too crowded
CANDIDATES = 32  # random curves drawn at once
GRID = 2  # cells a unit in the map of places already taken
CLASS_NAMES = ("disconnected", "connected")
# What an example's label is: whether the markers are connected (a class index), or a
# per-pixel mask of the path that joins them (1 on its drawn pixels, else 0).
CONNECTED, PATH = "connected", "path"
LABEL_KINDS = (CONNECTED, PATH)
PATH_CLASS_NAMES = ("background", "path")
CACHE_ENV = "CFCONV_CACHE_DIR"
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class PathfinderSpec:
    """One Pathfinder task: its resolution, difficulty and split sizes.

    Attributes:
        size: image side in pixels (square, one channel).
        length: dashes per path (the Long Range Arena's difficulties are 6, 9 and 14).
        distractors: paths that carry no marker (the two marked paths come on top).
        dash: length of a dash, in canvas units.
        gap: length between dashes along the centre line, in canvas units; the stroke's
            round ends take ``stroke`` of it from each side, so what stays dark is
            about ``gap - 2 stroke`` (pixel rounding leaves some gaps open anyway).
        stroke: radius of a path's stroke, in canvas units. A stroke is drawn whole
            pixels wide, at least one: 0.5 draws 1-pixel paths at 32 px, 3-pixel ones at
            64 px and 5-pixel ones at 128 px (1, 1.5 and 1.25 units). Below
            ``CLEARANCE - MARKER_RADIUS``, so a marker stays clear of other paths' strokes
            (up to the placement grid's rounding).
        labels: ``"connected"`` (a class index an image) or ``"path"`` (a ``[size,
            size, 1]`` mask of the pixels of the path joining the markers). The images
            are the same for both.
        seed: the data seed; the same spec always gives the same images.
        train, validation, test: examples per split (half of each split is connected).
    """

    size: int = 32
    length: int = 9
    distractors: int = 2
    dash: float = 1.0
    gap: float = 1.0
    stroke: float = 0.5
    labels: str = CONNECTED
    seed: int = 0
    train: int = 20000
    validation: int = 2000
    test: int = 2000

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"pathfinder size must be at least 16 pixels, got {self.size}")
        if self.length < 2 or self.distractors < 0:
            raise ValueError(
                f"pathfinder needs length >= 2 and distractors >= 0, got length="
                f"{self.length}, distractors={self.distractors}"
            )
        if self.dash <= 0 or self.gap <= 0:
            raise ValueError(f"dash and gap must be positive, got {self.dash}, {self.gap}")
        if not 0 < self.stroke < CLEARANCE - MARKER_RADIUS:
            raise ValueError(
                f"stroke must be above 0 and below {CLEARANCE - MARKER_RADIUS} units, "
                f"got {self.stroke}"
            )
        if self.path_length > MAX_PATH * (CANVAS - 2 * MARGIN):
            raise ValueError(
                f"paths of {self.length} dashes ({self.path_length:.0f} units) do not fit "
                f"the {CANVAS:.0f}-unit canvas; use fewer or shorter dashes"
            )
        if self.labels not in LABEL_KINDS:
            raise ValueError(f"pathfinder labels must be one of {LABEL_KINDS}, got {self.labels!r}")
        if min(self.train, self.validation, self.test) < 2:
            raise ValueError("every pathfinder split needs at least 2 examples")

    @property
    def path_length(self) -> float:
        """Canvas units from one end of a path to the other, along it."""
        return self.length * (self.dash + self.gap) - self.gap

    @property
    def dense(self) -> bool:
        """Whether the labels are per-pixel masks."""
        return self.labels == PATH

    @property
    def class_names(self) -> tuple[str, ...]:
        """The names of the label values: the two classes, or the mask's two values."""
        return PATH_CLASS_NAMES if self.dense else CLASS_NAMES

    @property
    def name(self) -> str:
        """The dataset name that gives this spec back (see ``parse_pathfinder``)."""
        default = PathfinderSpec()
        options = [
            f"{field.name}={getattr(self, field.name)}"
            for field in dataclasses.fields(self)
            if field.name != "size" and getattr(self, field.name) != getattr(default, field.name)
        ]
        return ":".join([f"pathfinder:{self.size}", *options])


def parse_pathfinder(name: str) -> PathfinderSpec:
    """``pathfinder:SIZE[:option=value...]`` -> its spec, e.g. ``pathfinder:64:length=14``.

    Raises:
        ValueError: not a pathfinder name, a bad size, an unknown option or value.
    """
    parts = name.split(":")
    size_ok = len(parts) >= 2 and parts[1].isascii() and parts[1].isdigit()
    if parts[0] != "pathfinder" or not size_ok:
        raise ValueError(
            f"a pathfinder dataset is named 'pathfinder:SIZE[:option=value]', got {name!r}"
        )
    types = {field.name: field.type for field in dataclasses.fields(PathfinderSpec)}
    options: dict[str, int | float | str] = {"size": int(parts[1])}
    for part in parts[2:]:
        key, _, value = part.partition("=")
        if key not in types or key == "size" or not value:
            known = sorted(set(types) - {"size"})
            raise ValueError(f"unknown pathfinder option {part!r} in {name!r}; options: {known}")
        if types[key] == "str":
            options[key] = value
            continue
        try:
            options[key] = float(value) if types[key] == "float" else int(value)
        except ValueError:
            raise ValueError(
                f"pathfinder option {key} must be "
                f"{'a number' if types[key] == 'float' else 'an integer'}, got {value!r}"
            ) from None
    return PathfinderSpec(**options)


def generate(spec: PathfinderSpec, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All examples of one split: images uint8 ``[N, size, size, 1]`` and labels: int32
    ``[N]`` (connected or not), or with ``labels="path"`` uint8 ``[N, size, size, 1]``
    masks of the path joining the markers.

    Example ``i`` of a split depends only on the spec, the split and ``i``; whether the
    markers are connected alternates, so every split is balanced.
    """
    drawn = _draw_split(spec, split)
    return drawn["images"], drawn[_labels_key(spec)]


def load(
    spec: PathfinderSpec, split: str, cache: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``generate``, kept in ``cache`` (default: ``$CFCONV_CACHE_DIR`` or
    ``~/.cache/cfconv_tf``) so a spec is drawn once per machine. The file holds both
    kinds of labels (compressed), so a spec's images are drawn once for both tasks."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; one of {SPLITS}")
    folder = cache or Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "cfconv_tf"))
    path = folder / "pathfinder" / f"{_cache_key(spec, split)}.npz"
    if path.is_file():
        try:
            with np.load(path) as stored:
                return stored["images"], stored[_labels_key(spec)]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # a damaged file is drawn again
    drawn = _draw_split(spec, split)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial.npz")
        np.savez_compressed(partial, **drawn)
        os.replace(partial, path)
    except OSError:
        pass  # a read-only home still gets its images, only not kept
    return drawn["images"], drawn[_labels_key(spec)]


def _draw_split(spec: PathfinderSpec, split: str) -> dict[str, np.ndarray]:
    """A split's ``images`` ``[N, size, size, 1]`` uint8, whether each is ``connected``
    ``[N]`` int32 (alternating), and the ``masks`` of their joining paths ``[N, size,
    size, 1]`` uint8."""
    count = getattr(spec, split)
    images = np.zeros((count, spec.size, spec.size, 1), np.uint8)
    connected = np.arange(count, dtype=np.int32) % 2
    masks = np.zeros_like(images)
    for index in range(count):
        rng = np.random.default_rng([spec.seed, SPLITS.index(split), index])
        images[index, :, :, 0], masks[index, :, :, 0] = draw(spec, bool(connected[index]), rng)
    return {"images": images, "connected": connected, "masks": masks}


def _labels_key(spec: PathfinderSpec) -> str:
    """Which of a drawn split's label arrays ``spec`` asks for."""
    return "masks" if spec.dense else "connected"


def _cache_key(spec: PathfinderSpec, split: str) -> str:
    """What a split's images depend on: the drawing options, the split, its size and
    this module's code (the other splits' sizes and the kind of labels do not count)."""
    drawing = {}
    for field in dataclasses.fields(spec):
        if field.name not in (*SPLITS, "labels"):
            value = getattr(spec, field.name)
            drawing[field.name] = float(value) if field.type == "float" else value
    text = json.dumps([drawing, split, getattr(spec, split)], sort_keys=True)
    return hashlib.sha256(text.encode() + Path(__file__).read_bytes()).hexdigest()[:24]


def draw(
    spec: PathfinderSpec, connected: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One image ``[size, size]`` uint8 (``2 + distractors`` paths and two markers) and
    the mask ``[size, size]`` uint8 of the path joining its markers: 1 on that path's
    drawn dashes (not the markers' disks around its ends), all 0 when ``connected`` is
    false."""
    paths, markers = layout(spec, connected, rng)
    canvas = np.zeros((spec.size, spec.size), np.uint8)
    mask = np.zeros_like(canvas)
    scale = spec.size / CANVAS
    for points in paths:
        _stamp(canvas, _dashes(points, spec) * scale, spec.stroke * scale)
    if connected:
        _stamp(mask, _dashes(paths[0], spec) * scale, spec.stroke * scale, value=1)
    _stamp(canvas, markers * scale, MARKER_RADIUS * scale)
    return canvas, mask


def layout(
    spec: PathfinderSpec, connected: bool, rng: np.random.Generator
) -> tuple[list[np.ndarray], np.ndarray]:
    """The paths (``[P, 2]`` each, canvas units) and the two markers ``[2, 2]`` of one image.

    The markers' distance is drawn first, from the same distribution for both labels,
    and the marked path (or pair of paths) is placed to match it: how far apart the
    markers are says nothing about the label.

    Raises:
        ValueError: the spec's paths do not fit the canvas.
    """
    apart = rng.uniform(*marker_distances(spec))
    for _ in range(RESTARTS):
        paths = _place_paths(spec, rng, connected, apart)
        if paths is not None:
            end = paths[0][-1] if connected else paths[1][-1]
            return paths, np.stack([paths[0][0], end])
    raise ValueError(
        f"{2 + spec.distractors} paths of {spec.path_length:.0f} units do not fit the "
        f"{CANVAS:.0f}-unit canvas; use fewer distractors or shorter paths"
    )


def marker_distances(spec: PathfinderSpec) -> tuple[float, float]:
    """The range (canvas units) the markers' distance is drawn from: the middle of the
    end-to-end distances of a path of ``spec.path_length`` units, at most most of the
    room inside the margin."""
    room = CANVAS - 2 * MARGIN
    return min(0.4 * spec.path_length, 0.5 * room), min(0.85 * spec.path_length, 0.8 * room)


def _place_paths(
    spec: PathfinderSpec, rng: np.random.Generator, connected: bool, apart: float
) -> list[np.ndarray] | None:
    """``2 + distractors`` paths ``[P, 2]`` (canvas units), each ``CLEARANCE`` away from
    the others; ``None`` when one does not fit within ``ATTEMPTS`` tries.

    The first path starts at a marker. The other marker, at ``apart`` units (to within
    ``APART_SLACK``) from it, is the first path's end when ``connected``, else the
    second path's end.

    Taken places are kept as a grid of ``GRID`` cells a unit, a cell blocked when it lies
    near a placed path, so a candidate is checked in one lookup per point.
    """
    blocked = np.zeros((int(CANVAS * GRID),) * 2, bool)
    placed: list[np.ndarray] = []
    for index in range(2 + spec.distractors):
        marked_end = index == (0 if connected else 1)
        for _ in range(ATTEMPTS // CANDIDATES):
            candidates = _placed_shapes(_random_shapes(spec.path_length, rng), rng)
            fits = _clear_of(candidates, blocked)
            if marked_end:
                anchor = candidates[:, 0] if connected else placed[0][0]
                fits &= (
                    np.abs(np.linalg.norm(candidates[:, -1] - anchor, axis=-1) - apart)
                    <= APART_SLACK
                )
            if fits.any():
                placed.append(candidates[np.argmax(fits)])
                _stamp(blocked, placed[-1] * GRID, CLEARANCE * GRID)
                break
        else:
            return None
    return placed


def _random_shapes(length: float, rng: np.random.Generator) -> np.ndarray:
    """``CANDIDATES`` smooth random curves ``[CANDIDATES, P, 2]`` from the origin, a point
    every ``STEP`` units. The curvature is interpolated between random values at knots
    ``KNOT_SPACING`` units apart, each within ``MAX_TURN`` radians a unit."""
    steps = int(round(length / STEP))
    along = np.arange(steps) * STEP / KNOT_SPACING
    knots = rng.uniform(-MAX_TURN, MAX_TURN, (CANDIDATES, int(along[-1]) + 2))
    below = along.astype(int)
    rate = knots[:, below] + (knots[:, below + 1] - knots[:, below]) * (along - below)
    heading = rng.uniform(0, 2 * np.pi, (CANDIDATES, 1)) + np.cumsum(rate * STEP, 1)
    moves = STEP * np.stack([np.sin(heading), np.cos(heading)], axis=-1)
    return np.concatenate([np.zeros((CANDIDATES, 1, 2)), np.cumsum(moves, axis=1)], axis=1)


def _placed_shapes(shapes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``shapes`` ``[C, P, 2]`` each moved to a random place inside the margin; a shape
    larger than the room left inside the margin is marked by NaN points."""
    low, high = shapes.min(axis=1), shapes.max(axis=1)
    room = (CANVAS - 2 * MARGIN) - (high - low)  # [C, 2]
    offset = MARGIN - low + rng.uniform(0, 1, room.shape) * np.maximum(room, 0)
    offset[np.any(room < 0, axis=1)] = np.nan
    return shapes + offset[:, None]


def _clear_of(candidates: np.ndarray, blocked: np.ndarray) -> np.ndarray:
    """Which of ``candidates`` ``[C, P, 2]`` lie inside the canvas and touch no blocked
    cell: bool ``[C]``."""
    inside = ~np.isnan(candidates).any(axis=(1, 2))
    cells = np.clip(np.nan_to_num(candidates * GRID).astype(int), 0, blocked.shape[0] - 1)
    return inside & ~blocked[cells[..., 0], cells[..., 1]].any(axis=1)


def _dashes(points: np.ndarray, spec: PathfinderSpec) -> np.ndarray:
    """The points of ``points`` that fall on a dash: each period of ``dash + gap`` units
    along the path starts with ``dash`` units drawn."""
    along = np.arange(len(points)) * STEP
    return points[np.mod(along, spec.dash + spec.gap) < spec.dash]


def _stamp(canvas: np.ndarray, centres: np.ndarray, radius: float, value: int = 255) -> None:
    """Set to ``value`` (255; or True on a bool grid) every pixel within ``radius``
    pixels (at least half a pixel) of the pixel that holds one of ``centres`` ``[P, 2]``
    (pixel coordinates ``(row, column)``)."""
    cells = np.unique(np.floor(centres).astype(int), axis=0)
    pixels = (cells[:, None, :] + _disk(max(radius, 0.5))[None]).reshape(-1, 2)
    inside = np.all((pixels >= 0) & (pixels < canvas.shape[0]), axis=1)
    canvas[pixels[inside, 0], pixels[inside, 1]] = value


@functools.cache
def _disk(radius: float) -> np.ndarray:
    """The offsets ``[K, 2]`` of the pixels within ``radius`` of a pixel."""
    reach = int(np.ceil(radius))
    span = np.arange(-reach, reach + 1)
    offsets = np.stack(np.meshgrid(span, span), -1).reshape(-1, 2)
    return offsets[np.linalg.norm(offsets, axis=1) <= radius]
