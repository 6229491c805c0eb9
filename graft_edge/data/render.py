"""Procedural vehicle renderer for the synthetic set: one pose, three aligned spectral views.

Each identity is a combination of cues that only one modality can see:
  rgb  body colour (hue)            - NIR and TIR see paint as flat grey / uniform warmth
  nir  retro-reflective pattern      - band / bars / checker / plates (invisible in RGB and TIR)
  tir  heat-signature location        - engine / exhaust / roof / hot brakes (only TIR sees heat)
Everything else (pose, shape, scale, background, illumination, noise, occluders) is drawn per
image or per camera and carries no identity. Vehicle coordinates: u along the body (front +1),
v downwards; the pose maps them to pixels, so cues move, flip and rotate with the vehicle.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

CUE_KINDS: dict[str, tuple[str, ...]] = {
    "rgb": ("hue",),
    "nir": ("band", "bars", "checker", "plates"),
    "tir": ("engine", "exhaust", "roof", "brakes"),
}
MAX_CUE_VALUES = 16
_TIR_SIZE = (1.0, 0.65, 1.45, 0.8)  # heat-spot size per level (cue values beyond the first 4)


def cue_name(modality: str, value: int, values: int) -> str:
    """Human-readable name of one cue value, e.g. 'hue 90', 'bars x3', 'engine'."""
    if modality == "rgb":
        hue, dark = _hue(value, values)
        return f"hue {round(hue * 360)}" + (" dark" if dark else "")
    kinds = CUE_KINDS[modality]
    kind, level = kinds[value % 4], value // 4
    return kind if level == 0 else f"{kind} v{level + 1}"


def _hue(value: int, values: int) -> tuple[float, bool]:
    """Hue in [0, 1) and a dark flag: evenly spaced hues, a dark second ring past 8 values."""
    ring = min(values, 8)
    return (value % ring) / ring, value >= ring


def body_colour(value: int, values: int) -> np.ndarray:
    """RGB paint of one colour cue value, (3,) in [0, 1]."""
    hue, dark = _hue(value, values)
    return np.array(colorsys.hsv_to_rgb(hue, 0.85, 0.5 if dark else 0.9), dtype=np.float32)


@dataclass(frozen=True)
class Camera:
    """Per-camera nuisance: viewpoint, distance, lighting, sensor gains, backgrounds."""

    flip: float  # +1 vehicle faces right, -1 left
    shift: tuple[float, float]  # (dx, dy) of the vehicle centre, fraction of (W, H)
    angle: float  # radians
    scale: float  # vehicle size relative to the frame
    night: bool  # RGB nearly black and noisy; NIR (active illuminator) and TIR fine
    rgb_gain: float
    rgb_cast: tuple[float, float, float]
    nir_gain: float
    tir_offset: float
    backgrounds: dict[str, np.ndarray]  # modality -> (H + 2m, W + 2m[, 3]) texture
    tir_columns: np.ndarray  # (W,) fixed-pattern column noise of the thermal sensor


@dataclass(frozen=True)
class Pose:
    """Per-image geometry of the vehicle (camera pose plus jitter) and its body shape."""

    flip: float
    cx: float
    cy: float
    su: float  # pixels per vehicle unit along u
    sv: float  # pixels per vehicle unit along v
    cos: float
    sin: float
    length: float  # half-length of the body in u units
    cab_front: float
    cab_rear: float
    cab_top: float


def _texture(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Smooth random texture in [0, 1] (bilinear upsampling of a coarse random grid)."""
    grid = rng.random(cells, dtype=np.float32)
    ys = np.linspace(0, cells[0] - 1, shape[0], dtype=np.float32)
    xs = np.linspace(0, cells[1] - 1, shape[1], dtype=np.float32)
    y0, x0 = np.minimum(ys.astype(int), cells[0] - 2), np.minimum(xs.astype(int), cells[1] - 2)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def make_camera(rng: np.random.Generator, size: tuple[int, int], night: bool, margin: int) -> Camera:
    """Draw one camera's viewpoint, lighting and background textures."""
    H, W = size
    shape = (H + 2 * margin, W + 2 * margin)
    rows = np.linspace(0, 1, shape[0], dtype=np.float32)[:, None]
    horizon = rng.uniform(0.4, 0.65)
    ground = (rows > horizon).astype(np.float32)[..., None]  # (h, 1, 1)
    sky, road = rng.uniform(0.35, 0.85, 3), rng.uniform(0.2, 0.45) * np.ones(3) + rng.uniform(-0.05, 0.05, 3)
    tex = _texture(rng, shape, (6, 12))[..., None]
    rgb = (sky * (1 - ground) + road * ground) * (0.75 + 0.5 * tex)
    nir = (rng.uniform(0.35, 0.6) * (1 - ground[..., 0]) + rng.uniform(0.2, 0.4) * ground[..., 0])
    nir = nir * (0.6 + 0.8 * _texture(rng, shape, (5, 10)))
    tir = rng.uniform(0.08, 0.22) + 0.12 * _texture(rng, shape, (4, 8)) + 0.05 * ground[..., 0]
    return Camera(
        flip=float(rng.choice([-1.0, 1.0])),
        shift=(rng.uniform(-0.07, 0.07), rng.uniform(-0.05, 0.05)),
        angle=float(np.deg2rad(rng.uniform(-7, 7))),
        scale=rng.uniform(0.72, 0.95),
        night=night,
        rgb_gain=rng.uniform(0.05, 0.1) if night else rng.uniform(0.7, 1.25),
        rgb_cast=tuple(rng.uniform(0.85, 1.15, 3)),
        nir_gain=rng.uniform(0.8, 1.2),
        tir_offset=rng.uniform(-0.06, 0.06) - (0.05 if night else 0.0),
        backgrounds={"rgb": rgb.astype(np.float32), "nir": nir.astype(np.float32), "tir": tir.astype(np.float32)},
        tir_columns=rng.normal(0, 0.015, W).astype(np.float32),
    )


def make_pose(rng: np.random.Generator, cam: Camera, size: tuple[int, int]) -> Pose:
    """Camera pose plus per-image jitter (position, angle, scale, direction) and body shape."""
    H, W = size
    scale = cam.scale * rng.uniform(0.94, 1.06)
    angle = cam.angle + np.deg2rad(rng.uniform(-2.5, 2.5))
    flip = -cam.flip if rng.random() < 0.15 else cam.flip  # a vehicle driving the other way
    return Pose(
        flip=flip,
        cx=W * (0.5 + cam.shift[0] + rng.uniform(-0.04, 0.04)),
        cy=H * (0.5 + cam.shift[1] + rng.uniform(-0.04, 0.04)),
        su=0.5 * W * scale,
        sv=0.6 * H * scale,
        cos=float(np.cos(angle)),
        sin=float(np.sin(angle)),
        length=rng.uniform(0.88, 1.0),
        cab_front=rng.uniform(0.3, 0.5),
        cab_rear=rng.uniform(-0.8, -0.6),
        cab_top=rng.uniform(-0.66, -0.52),
    )


class Parts:
    """Vehicle part masks (H, W) in one pose, plus the vehicle coordinates u, v."""

    def __init__(self, pose: Pose, size: tuple[int, int]) -> None:
        H, W = size
        dy, dx = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5
        dx, dy = dx - pose.cx, dy - pose.cy
        u = pose.flip * (pose.cos * dx + pose.sin * dy) / pose.su
        v = (-pose.sin * dx + pose.cos * dy) / pose.sv
        L = pose.length
        self.u, self.v, self.L = u, v, L
        self.body = ((u / L) ** 2) ** 4 + (((v - 0.15) / 0.3) ** 2) ** 4 <= 1.0
        t = np.clip((-0.15 - v) / (-0.15 - pose.cab_top), 0.0, 1.0)  # 0 cabin bottom .. 1 roof
        front, rear = pose.cab_front * L - 0.35 * t, pose.cab_rear * L + 0.12 * t
        self.cabin = (v >= pose.cab_top) & (v <= -0.12) & (u <= front) & (u >= rear)
        pillar = 0.5 * (front + rear)
        self.windows = (
            self.cabin & (v >= pose.cab_top + 0.07) & (v <= -0.2) & (u <= front - 0.07) & (u >= rear + 0.07)
            & (np.abs(u - pillar) > 0.035)
        )
        aspect = pose.su / pose.sv
        self.wheel_d2 = [((u - c * L) * aspect) ** 2 + (v - 0.45) ** 2 for c in (-0.62, 0.62)]
        self.wheels = (self.wheel_d2[0] <= 0.2**2) | (self.wheel_d2[1] <= 0.2**2)
        self.vehicle = self.body | self.cabin | self.wheels
        lamp_v = (v > -0.08) & (v < 0.06) & self.body
        self.head_lamp = lamp_v & (u > 0.86 * L)
        self.tail_lamp = lamp_v & (u < -0.88 * L)
        self.panel = self.body & (v > -0.1) & (v < 0.38) & (np.abs(u) < 0.85 * L) & ~self.wheels


def nir_pattern(parts: Parts, value: int) -> np.ndarray:
    """Reflective-pattern mask (H, W) on the lower body panel for one NIR cue value."""
    u, v, L = parts.u, parts.v, parts.L
    kind, level = value % 4, value // 4
    pu = (u + 0.85 * L) / (1.7 * L)  # 0..1 along the panel
    pv = (v + 0.1) / 0.48  # 0..1 down the panel
    if kind == 0:  # horizontal band(s)
        mask = np.abs((pv * (1 + level)) % 1.0 - 0.5) < 0.2
    elif kind == 1:  # vertical bars
        mask = np.abs((pu * (4 + 2 * level)) % 1.0 - 0.5) < 0.25
    elif kind == 2:  # checker
        mask = ((pu * (5 + 2 * level)) % 1.0 < 0.5) ^ ((pv * 2) % 1.0 < 0.5)
    else:  # square plates
        n = 1 + level
        centres = (np.arange(n) + 0.5) / n
        mask = (np.abs(pu[..., None] - centres) < 0.09 / n ** 0.5).any(-1) & (np.abs(pv - 0.5) < 0.3)
    return parts.panel & mask


def tir_heat(parts: Parts, value: int, amp: float) -> np.ndarray:
    """Heat added (H, W) by one TIR cue value: engine, exhaust, roof or brakes, in vehicle coordinates."""
    u, v, L = parts.u, parts.v, parts.L
    kind, size = value % 4, _TIR_SIZE[(value // 4) % 4]

    def blob(uc: float, vc: float, su: float, sv: float) -> np.ndarray:
        """Gaussian hot spot centred at (uc, vc) in vehicle units."""
        return np.exp(-0.5 * (((u - uc) / (su * size)) ** 2 + ((v - vc) / (sv * size)) ** 2))

    if kind == 0:  # hot engine bay at the front
        heat = blob(0.62 * L, 0.1, 0.24, 0.17) * parts.body
    elif kind == 1:  # exhaust plume at the rear bottom
        heat = blob(-0.95 * L, 0.36, 0.13, 0.1) * 1.3
    elif kind == 2:  # warm roof (heated cabin)
        top = v[parts.cabin].min() if parts.cabin.any() else -0.6
        heat = blob(float(u[parts.cabin].mean()) if parts.cabin.any() else 0.0, top + 0.06, 0.45, 0.08) * parts.cabin
    else:  # hot brakes: both wheels glow
        r = 0.2 * size
        heat = ((parts.wheel_d2[0] <= r**2) | (parts.wheel_d2[1] <= r**2)).astype(np.float32)
    return amp * heat.astype(np.float32)


def blur3(x: np.ndarray, passes: int = 1) -> np.ndarray:
    """Separable [1 2 1]/4 blur with edge padding (thermal optics are soft)."""
    for _ in range(passes):
        p = np.pad(x, 1, mode="edge")
        x = (p[:-2] + 2 * p[1:-1] + p[2:]) * 0.25
        x = (x[:, :-2] + 2 * x[:, 1:-1] + x[:, 2:]) * 0.25
    return x


def background(cam: Camera, modality: str, offset: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """A writable copy of the camera's background at a per-image offset (never identical pixels)."""
    H, W = size
    oy, ox = offset
    return cam.backgrounds[modality][oy : oy + H, ox : ox + W].copy()


def noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean sensor noise with standard deviation sigma (uniform: 5x cheaper than Gaussian)."""
    return (rng.random(shape, dtype=np.float32) - np.float32(0.5)) * np.float32(sigma * 12**0.5)


def render_rgb(parts: Parts, cam: Camera, rng: np.random.Generator, colour: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Visible-light view (H, W, 3): paint colour carries the identity; night cameras are nearly black."""
    img = bg
    paint = parts.body | parts.cabin
    shade = (1.05 - 0.35 * np.clip(parts.v[paint] + 0.6, 0, 1.2))[:, None]  # lit from above, (n, 1)
    img[paint] = colour * np.float32(rng.uniform(0.9, 1.1)) * shade
    img[parts.windows] = (0.12 + 0.1 * parts.u[parts.windows].clip(-1, 1) ** 2)[:, None]
    img[parts.wheels] = 0.07
    img *= np.float32(cam.rgb_gain * rng.uniform(0.88, 1.12)) * np.asarray(cam.rgb_cast, dtype=np.float32)
    lamp_level = 1.0 if cam.night else 0.85
    img[parts.head_lamp] = lamp_level
    img[parts.tail_lamp] = (lamp_level, 0.1, 0.1)
    img += noise(rng, img.shape, 0.05 if cam.night else 0.025)
    return img


def render_nir(parts: Parts, cam: Camera, rng: np.random.Generator, value: int, bg: np.ndarray) -> np.ndarray:
    """Near-infrared view (H, W): all paint looks alike; the reflective pattern carries the identity."""
    img = bg
    img[parts.body | parts.cabin] = rng.uniform(0.42, 0.55)
    img[parts.windows] = 0.15
    img[parts.wheels] = 0.1
    img[nir_pattern(parts, value)] = rng.uniform(0.85, 0.98)
    img *= np.float32(cam.nir_gain * rng.uniform(0.9, 1.1))
    img[parts.head_lamp | parts.tail_lamp] = 0.95
    img += noise(rng, img.shape, 0.03)
    return img


def render_tir(parts: Parts, cam: Camera, rng: np.random.Generator, value: int, bg: np.ndarray) -> np.ndarray:
    """Thermal view (H, W): a warm body; where the heat sits carries the identity."""
    warm = rng.uniform(0.36, 0.46)
    img = bg
    img[parts.body | parts.cabin] = warm
    img[parts.windows] = warm - 0.08
    img[parts.wheels] = warm + 0.04
    img += tir_heat(parts, value, rng.uniform(0.4, 0.55)) + np.float32(cam.tir_offset)
    img = blur3(img, passes=max(1, img.shape[0] // 48))
    return img + cam.tir_columns[None, :] + noise(rng, img.shape, 0.02)


def add_occluder(views: dict[str, np.ndarray], rng: np.random.Generator, width: int) -> None:
    """Sometimes a pole in front of the vehicle, at the same place in every modality."""
    if rng.random() >= 0.12:
        return
    w = max(2, int(round(width * rng.uniform(0.02, 0.045))))
    x0 = int(rng.integers(0, width - w))
    level = {"rgb": rng.uniform(0.3, 0.6), "nir": rng.uniform(0.4, 0.6), "tir": rng.uniform(0.15, 0.25)}
    for m, img in views.items():
        img[:, x0 : x0 + w] = level[m]


def to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] float (H, W) or (H, W, 3) -> uint8 (H, W, 3)."""
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
