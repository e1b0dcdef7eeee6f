"""Procedural pictures with identity for the synthetic data sets (datasets/synthetic.py).

Persons, vehicles, birds and building sites (satellite, drone and street views): each identity is a
set of drawing parameters (colours of large regions, patterns, proportions, parts) drawn once from
a numpy generator, then rendered per image on a cluttered background of its own. A `Camera` holds
the look of one camera (colour cast, brightness, blur, scale, viewpoint), applied on top, so the
same identity differs across cameras in a learnable way.
"""
import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

PERSON_SIZE, VEHICLE_SIZE, CAR_SIZE, SQUARE = (64, 128), (128, 128), (192, 128), (128, 128)  # (width, height)


def _colour(rng, grey=0.2):
    """A clothing / paint colour: saturated hues, sometimes black, grey or white."""
    if rng.random() < grey:
        v = rng.choice([0.1, 0.45, 0.9]) + rng.uniform(-0.05, 0.05)
        return (int(255 * v),) * 3
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.55, 1.0), rng.uniform(0.45, 1.0))
    return tuple(int(255 * c) for c in rgb)


def _muted(rng, tone):
    """A background colour near `tone` (desaturated, so the figure stands out)."""
    c = np.array(tone) * rng.uniform(0.6, 1.3) + rng.uniform(-40, 40, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


class Camera:
    """Per-camera look: colour cast, brightness, blur, figure scale, background tone and preferred viewpoint."""

    def __init__(self, rng, index):
        self.index = index
        self.gain = rng.uniform(0.8, 1.2, 3)
        self.brightness = rng.uniform(0.75, 1.2)
        self.blur = rng.uniform(0.0, 1.1)
        self.scale = rng.uniform(0.85, 1.0)
        self.tone = tuple(int(v) for v in rng.uniform(60, 190, 3))
        self.view = index  # viewpoint family: even cameras see the front / left, odd ones the back / right


def _background(rng, size, tone, clutter=(4, 10)):
    """Vertical gradient around `tone`, noise and random rectangles / ellipses."""
    w, h = size
    top, bottom = np.array(_muted(rng, tone), float), np.array(_muted(rng, tone), float)
    t = np.linspace(0, 1, h)[:, None, None]
    a = top * (1 - t) + bottom * t + rng.normal(0, 6, (h, 1, 3))
    img = Image.fromarray(np.clip(np.broadcast_to(a, (h, w, 3)), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(rng.integers(*clutter)):
        x, y = rng.uniform(-0.2 * w, w), rng.uniform(-0.2 * h, h)
        bw, bh = rng.uniform(0.1, 0.6) * w, rng.uniform(0.05, 0.4) * h
        colour = _muted(rng, tone) if rng.random() < 0.7 else _colour(rng, grey=0.5)
        (d.rectangle if rng.random() < 0.6 else d.ellipse)([x, y, x + bw, y + bh], fill=colour)
    return img


def _camera_look(img, cam, rng, flip=None):
    """Camera colour cast and brightness, sensor noise, blur and (random unless given) horizontal flip."""
    if flip is None:
        flip = rng.random() < 0.5
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    a = np.asarray(img, dtype=np.float32) * (cam.gain * cam.brightness * rng.uniform(0.88, 1.12))
    a += rng.normal(0, 3.0, a.shape[:2] + (1,))
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    radius = cam.blur * rng.uniform(0.6, 1.3)
    return img.filter(ImageFilter.GaussianBlur(radius)) if radius > 0.35 else img


def _pattern(d, box, kind, colour, period):
    """Stripes / checks of `colour` inside `box` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    period = max(3.0, period)
    if kind == "hstripes":
        for y in np.arange(y0 + period / 2, y1, period):
            d.rectangle([x0, y, x1, min(y1, y + period / 2)], fill=colour)
    elif kind == "vstripes":
        for x in np.arange(x0 + period / 2, x1, period):
            d.rectangle([x, y0, min(x1, x + period / 2), y1], fill=colour)
    elif kind == "checks":
        for i, y in enumerate(np.arange(y0, y1, period)):
            for x in np.arange(x0 + (i % 2) * period, x1, 2 * period):
                d.rectangle([x, y, min(x1, x + period), min(y1, y + period)], fill=colour)


def person_identity(rng):
    return dict(upper=_colour(rng), lower=_colour(rng), accent=_colour(rng, grey=0.4),
                pattern=rng.choice(["plain", "plain", "hstripes", "vstripes", "checks"]),
                skin=tuple(int(v) for v in np.array([225, 180, 150]) * rng.uniform(0.45, 1.05)),
                hair=_colour(rng, grey=0.7), long_hair=rng.random() < 0.35, short_sleeves=rng.random() < 0.4,
                legwear=rng.choice(["trousers", "trousers", "shorts", "skirt"]), shoes=_colour(rng, grey=0.7),
                bag=rng.choice(["none", "backpack", "shoulder"]), bag_colour=_colour(rng),
                height=rng.uniform(0.8, 0.92), build=rng.uniform(0.85, 1.2), torso=rng.uniform(0.34, 0.42))


def draw_person(ident, cam, rng, size=PERSON_SIZE):
    """A pedestrian box: head, torso with pattern, arms, legs, shoes and a bag, on clutter."""
    w, h = size
    img = _background(rng, size, cam.tone)
    d = ImageDraw.Draw(img)
    ph = h * ident["height"] * cam.scale * rng.uniform(0.93, 1.05)  # figure height in pixels
    cx = w / 2 + rng.uniform(-0.08, 0.08) * w
    y0 = (h - ph) / 2 + rng.uniform(-0.05, 0.05) * h
    r = ph * 0.07  # head radius
    tw = ph * 0.24 * ident["build"]  # torso width
    ty0, ty1 = y0 + 2 * r, y0 + 2 * r + ph * ident["torso"]
    feet, stride = y0 + ph, rng.uniform(-0.08, 0.08) * ph
    back = (cam.view + rng.integers(0, 4)) % 4 == 1  # seen from behind: the backpack covers the torso
    if ident["bag"] == "backpack" and not back:  # the straps' bag peeks out at the side
        d.rectangle([cx + tw * 0.35, ty0 + 2, cx + tw * 0.75, ty0 + 0.75 * (ty1 - ty0)], fill=ident["bag_colour"])
    legw = tw * 0.42
    for side in (-1, 1):  # legs: polygons from the hip to a foot moved by the stride
        hip = cx + side * tw * 0.26
        foot = hip + side * stride * 0.5
        d.polygon([(hip - legw / 2, ty1), (hip + legw / 2, ty1), (foot + legw / 2, feet), (foot - legw / 2, feet)],
                  fill=ident["skin"] if ident["legwear"] != "trousers" else ident["lower"])
        d.rectangle([foot - legw * 0.6, feet - ph * 0.03, foot + legw * 0.7, feet], fill=ident["shoes"])
    leg = feet - ty1
    if ident["legwear"] == "shorts":
        d.rectangle([cx - tw * 0.5, ty1 - 1, cx + tw * 0.5, ty1 + 0.4 * leg], fill=ident["lower"])
    elif ident["legwear"] == "skirt":
        d.polygon([(cx - tw * 0.48, ty1 - 1), (cx + tw * 0.48, ty1 - 1), (cx + tw * 0.7, ty1 + 0.55 * leg),
                   (cx - tw * 0.7, ty1 + 0.55 * leg)], fill=ident["lower"])
    else:
        d.rectangle([cx - tw * 0.5, ty1 - 1, cx + tw * 0.5, ty1 + 0.12 * leg], fill=ident["lower"])
    aw = tw * 0.2  # arms
    for side in (-1, 1):
        ax = cx + side * (tw / 2 + aw / 2)
        d.rectangle([ax - aw / 2, ty0 + 1, ax + aw / 2, ty1 + 0.05 * ph], fill=ident["skin"])
        sleeve = ty0 + (0.35 if ident["short_sleeves"] else 0.95) * (ty1 - ty0)
        d.rectangle([ax - aw / 2, ty0 + 1, ax + aw / 2, sleeve], fill=ident["upper"])
    torso = [cx - tw / 2, ty0, cx + tw / 2, ty1]
    d.rectangle(torso, fill=ident["upper"])
    _pattern(d, torso, ident["pattern"], ident["accent"], tw / 4)
    if ident["bag"] == "backpack" and back:
        d.rectangle([cx - tw * 0.35, ty0 + 3, cx + tw * 0.35, ty0 + 0.7 * (ty1 - ty0)], fill=ident["bag_colour"])
    elif ident["bag"] == "shoulder":
        d.line([(cx - tw / 2, ty0), (cx + tw / 2, ty1 - 0.2 * (ty1 - ty0))], fill=ident["bag_colour"], width=2)
        d.rectangle([cx + tw * 0.4, ty1 - 0.3 * (ty1 - ty0), cx + tw * 0.85, ty1 + 0.05 * ph], fill=ident["bag_colour"])
    d.rectangle([cx - r * 0.45, ty0 - r * 0.5, cx + r * 0.45, ty0 + 1], fill=ident["skin"])  # neck
    d.ellipse([cx - r, y0, cx + r, y0 + 2 * r], fill=ident["skin"])
    hair_bottom = y0 + (2.6 * r if ident["long_hair"] else 0.8 * r) if not back else y0 + 2.6 * r
    d.chord([cx - r * 1.05, y0 - 1, cx + r * 1.05, y0 + 2 * r], 180, 360, fill=ident["hair"])
    if ident["long_hair"] or back:
        d.rectangle([cx - r * 1.05, y0 + r, cx + r * 1.05, hair_bottom], fill=ident["hair"])
    return _camera_look(img, cam, rng)


def junk_box(cam, rng, size=PERSON_SIZE):
    """A bad detection (Market's id -1): clutter with a fragment of a random person at the border."""
    img = _background(rng, size, cam.tone, clutter=(8, 16))
    if rng.random() < 0.7:
        part = draw_person(person_identity(rng), cam, rng, size)
        x, y = int(rng.uniform(0.4, 0.8) * size[0]), int(rng.uniform(0.3, 0.7) * size[1])
        img.paste(part.crop((0, 0, size[0] - x, size[1] - y)), (x, y))
    return _camera_look(img, cam, rng)


# body height / length and the cabin's span along the body, per vehicle type
VEHICLE_SHAPES = {"sedan": (0.2, (0.25, 0.75)), "suv": (0.26, (0.15, 0.85)), "hatchback": (0.22, (0.2, 0.9)),
                  "truck": (0.25, (0.05, 0.35)), "van": (0.3, (0.05, 0.95))}


def vehicle_identity(rng):
    body = _colour(rng, grey=0.3)
    kind = rng.choice(list(VEHICLE_SHAPES))
    height, cabin = VEHICLE_SHAPES[kind]
    return dict(kind=kind, body=body, roof=body if rng.random() < 0.6 else _colour(rng, grey=0.8),
                window=tuple(int(v) for v in rng.uniform(20, 110, 3)),
                stripe=_colour(rng) if rng.random() < 0.45 else None, rim=_colour(rng, grey=0.8),
                light=(255, 240, 180) if rng.random() < 0.5 else (255, 140, 60), length=rng.uniform(0.78, 0.92),
                height=height * rng.uniform(0.9, 1.1), cabin=cabin)


def draw_vehicle(ident, cam, rng, size=VEHICLE_SIZE, view=None):
    """A vehicle from the side (left/right) or the front/rear, on clutter; returns (image, bbox x1 y1 x2 y2)."""
    w, h = size
    img = _background(rng, size, cam.tone)
    d = ImageDraw.Draw(img)
    s = cam.scale * rng.uniform(0.92, 1.05)
    cx, base = w / 2 + rng.uniform(-0.06, 0.06) * w, h * (0.75 + rng.uniform(-0.05, 0.05))
    view = view or ("side", "front", "side", "rear")[(cam.view + rng.integers(0, 2) * 2) % 4]
    if view == "side":
        length = w * ident["length"] * s
        bh = length * ident["height"]
        x0, x1 = cx - length / 2, cx + length / 2
        c0, c1 = x0 + ident["cabin"][0] * length, x0 + ident["cabin"][1] * length
        ch = bh * (0.9 if ident["kind"] != "van" else 1.1)
        top = base - bh - ch
        d.polygon([(c0, base - bh), (c0 + 0.12 * length, top), (c1 - 0.08 * length, top), (c1, base - bh)],
                  fill=ident["roof"])
        d.polygon([(c0 + 0.05 * length, base - bh), (c0 + 0.14 * length, top + ch * 0.25),
                   (c1 - 0.1 * length, top + ch * 0.25), (c1 - 0.03 * length, base - bh)], fill=ident["window"])
        d.rounded_rectangle([x0, base - bh, x1, base], radius=bh * 0.25, fill=ident["body"])
        if ident["stripe"]:
            d.rectangle([x0, base - bh * 0.6, x1, base - bh * 0.4], fill=ident["stripe"])
        d.rectangle([x1 - 0.05 * length, base - bh * 0.85, x1, base - bh * 0.65], fill=ident["light"])
        wr = bh * 0.5
        axles = (0.18, 0.82) if ident["kind"] != "truck" else (0.15, 0.62, 0.85)
        for a in axles:
            x = x0 + a * length
            d.ellipse([x - wr, base - wr, x + wr, base + wr], fill=(25, 25, 25))
            d.ellipse([x - wr / 2, base - wr / 2, x + wr / 2, base + wr / 2], fill=ident["rim"])
        box = (x0, top, x1, base + wr)
    else:  # front or rear: body box, glass, lights, plate / grille, wheel feet
        bw = w * 0.62 * s
        bh = bw * ident["height"] * 1.6
        x0, x1 = cx - bw / 2, cx + bw / 2
        top = base - bh - bh * 0.8
        d.rectangle([x0 + bw * 0.05, base - bh * 0.1, x0 + bw * 0.2, base + bh * 0.25], fill=(25, 25, 25))
        d.rectangle([x1 - bw * 0.2, base - bh * 0.1, x1 - bw * 0.05, base + bh * 0.25], fill=(25, 25, 25))
        d.polygon([(x0 + bw * 0.06, base - bh), (x0 + bw * 0.16, top), (x1 - bw * 0.16, top),
                   (x1 - bw * 0.06, base - bh)], fill=ident["roof"])
        d.polygon([(x0 + bw * 0.12, base - bh), (x0 + bw * 0.2, top + bh * 0.15), (x1 - bw * 0.2, top + bh * 0.15),
                   (x1 - bw * 0.12, base - bh)], fill=ident["window"])
        d.rounded_rectangle([x0, base - bh, x1, base], radius=bh * 0.15, fill=ident["body"])
        if ident["stripe"]:
            d.rectangle([cx - bw * 0.08, base - bh, cx + bw * 0.08, base], fill=ident["stripe"])
        light = ident["light"] if view == "front" else (200, 20, 20)
        for lx in (x0 + bw * 0.05, x1 - bw * 0.2):
            d.rectangle([lx, base - bh * 0.8, lx + bw * 0.15, base - bh * 0.55], fill=light)
        if view == "front":
            d.rectangle([cx - bw * 0.22, base - bh * 0.5, cx + bw * 0.22, base - bh * 0.25], fill=(35, 35, 35))
        d.rectangle([cx - bw * 0.12, base - bh * 0.22, cx + bw * 0.12, base - bh * 0.08], fill=(235, 235, 225))
        box = (x0, top, x1, base + bh * 0.25)
    flip = rng.random() < 0.5
    img = _camera_look(img, cam, rng, flip=flip)
    x0, y0, x1, y1 = (max(0, min(v, lim - 1)) for v, lim in zip(box, (w, h, w, h)))
    if flip:
        x0, x1 = w - 1 - x1, w - 1 - x0
    return img, (int(x0) + 1, int(y0) + 1, int(x1) + 1, int(y1) + 1)  # 1-based like the CARS annotations


def bird_identity(rng):
    return dict(body=_colour(rng, grey=0.3), belly=_colour(rng, grey=0.5), head=_colour(rng, grey=0.3),
                wing=_colour(rng, grey=0.3), wing_pattern=rng.choice(["plain", "bars", "spots"]),
                mark=_colour(rng, grey=0.5), beak=_colour(rng, grey=0.5), beak_len=rng.uniform(0.15, 0.5),
                tail=rng.uniform(0.3, 0.8), size=rng.uniform(0.75, 1.0), plump=rng.uniform(0.55, 0.8))


def draw_bird(ident, cam, rng, size=SQUARE):
    """A perched bird (body, belly, wing with marks, head, beak, tail) on sky / foliage clutter."""
    w, h = size
    img = _background(rng, size, cam.tone)
    d = ImageDraw.Draw(img)
    s = w * 0.32 * ident["size"] * cam.scale * rng.uniform(0.85, 1.1)  # body half length
    cx, cy = w / 2 + rng.uniform(-0.1, 0.1) * w, h / 2 + rng.uniform(-0.08, 0.08) * h
    bh = s * ident["plump"]
    d.line([(0, cy + bh * 1.15), (w, cy + bh * 1.15 + rng.uniform(-10, 10))], fill=(90, 60, 30), width=4)
    d.polygon([(cx - s * 0.8, cy), (cx - s * (0.9 + ident["tail"]), cy + bh * 0.7),
               (cx - s * (0.8 + ident["tail"]), cy + bh * 1.0)], fill=ident["wing"])
    d.ellipse([cx - s, cy - bh, cx + s, cy + bh], fill=ident["body"])
    d.ellipse([cx - s * 0.4, cy - bh * 0.1, cx + s * 0.8, cy + bh], fill=ident["belly"])
    wing = [cx - s * 0.85, cy - bh * 0.6, cx + s * 0.35, cy + bh * 0.45]
    d.ellipse(wing, fill=ident["wing"])
    if ident["wing_pattern"] == "bars":
        for k in range(3):
            x = wing[0] + (0.3 + 0.2 * k) * (wing[2] - wing[0])
            d.line([(x, wing[1] + 4), (x - 4, wing[3] - 4)], fill=ident["mark"], width=3)
    elif ident["wing_pattern"] == "spots":
        for k in range(5):
            x = wing[0] + (0.2 + 0.15 * k) * (wing[2] - wing[0])
            y = wing[1] + (0.3 + 0.1 * (k % 3)) * (wing[3] - wing[1])
            d.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=ident["mark"])
    hr, hx, hy = bh * 0.7, cx + s * 0.85, cy - bh * 0.75
    d.ellipse([hx - hr, hy - hr, hx + hr, hy + hr], fill=ident["head"])
    bl = s * ident["beak_len"]
    d.polygon([(hx + hr * 0.8, hy - hr * 0.25), (hx + hr * 0.8 + bl, hy + hr * 0.1), (hx + hr * 0.8, hy + hr * 0.35)],
              fill=ident["beak"])
    d.ellipse([hx + hr * 0.25, hy - hr * 0.35, hx + hr * 0.5, hy - hr * 0.1], fill=(10, 10, 10))
    for k in (-0.2, 0.15):
        d.line([(cx + k * s, cy + bh * 0.9), (cx + k * s, cy + bh * 1.15)], fill=(60, 50, 40), width=2)
    return _camera_look(img, cam, rng)


def draw_site(rng, size=256):
    """A top-down map of one University-1652 site: ground, roads, trees, a field and the building at the centre."""
    ground = [(80, 120, 60), (150, 140, 95), (125, 125, 120), (95, 105, 70)][rng.integers(0, 4)]
    noise = rng.normal(0, 12, (size // 8, size // 8, 1)) + np.array(ground)
    img = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
    d = ImageDraw.Draw(img)
    for _ in range(rng.integers(1, 3)):  # roads crossing the map
        a, off = rng.uniform(0, np.pi), rng.uniform(-0.4, 0.4) * size
        dx, dy = np.cos(a) * size, np.sin(a) * size
        px, py = size / 2 - np.sin(a) * off, size / 2 + np.cos(a) * off
        d.line([(px - dx, py - dy), (px + dx, py + dy)], fill=(70, 70, 72), width=int(rng.integers(10, 22)))
    fx, fy = rng.uniform(0, 0.6, 2) * size
    d.rectangle([fx, fy, fx + size * 0.3, fy + size * 0.2], fill=_colour(rng, grey=0.5))
    for _ in range(rng.integers(5, 16)):  # trees
        x, y, r = *rng.uniform(0, size, 2), rng.uniform(4, 10)
        d.ellipse([x - r, y - r, x + r, y + r], fill=(30, int(rng.uniform(70, 110)), 35))
    roof, detail = _colour(rng, grey=0.3), _colour(rng, grey=0.5)
    c, a, b = size / 2, size * rng.uniform(0.14, 0.24), size * rng.uniform(0.1, 0.2)
    shape = rng.choice(["rect", "L", "U", "round", "cross"])
    parts = {"rect": [(-a, -b, a, b)], "L": [(-a, -b, a, 0), (-a, -b, -a / 3, b)],
             "U": [(-a, -b, -a / 2, b), (a / 2, -b, a, b), (-a, b / 2, a, b)],
             "cross": [(-a, -b / 3, a, b / 3), (-a / 3, -b, a / 3, b)], "round": []}[shape]
    for shade, colour in ((6, (35, 35, 35)), (0, roof)):  # shadow first, then the roof
        if shape == "round":
            d.ellipse([c - a + shade, c - a + shade, c + a + shade, c + a + shade], fill=colour)
        for x0, y0, x1, y1 in parts:
            d.rectangle([c + x0 + shade, c + y0 + shade, c + x1 + shade, c + y1 + shade], fill=colour)
    d.rectangle([c - a * 0.3, c - b * 0.3, c + a * 0.1, c + b * 0.1], fill=detail)
    return img, roof


def satellite_view(site, cam, rng, size=SQUARE):
    return _camera_look(site.resize(size, Image.Resampling.BILINEAR), cam, rng, flip=False)


def drone_view(site, cam, rng, size=SQUARE):
    """The site seen obliquely by a circling drone: rotated, zoomed, perspective-squashed."""
    n = site.size[0]
    ground = site.getpixel((2, 2))
    img = site.rotate(rng.uniform(0, 360), resample=Image.Resampling.BILINEAR, fillcolor=ground)
    c, half, tilt = n / 2, n / 2 * rng.uniform(0.5, 0.85), rng.uniform(0.1, 0.45)
    shift = rng.uniform(-0.08, 0.08, 2) * n
    quad = (c - half * (1 + tilt), c - half, c - half * (1 - tilt / 2), c + half,
            c + half * (1 - tilt / 2), c + half, c + half * (1 + tilt), c - half)  # ul, ll, lr, ur
    quad = tuple(v + shift[i % 2] for i, v in enumerate(quad))
    img = img.transform(size, Image.Transform.QUAD, quad, resample=Image.Resampling.BILINEAR, fillcolor=ground)
    return _camera_look(img, cam, rng, flip=False)


def street_view(roof, cam, rng, size=SQUARE):
    """A facade photographed from the street: sky, walls near the roof colour, windows, road."""
    w, h = size
    img = _background(rng, size, (150, 180, 215), clutter=(0, 3))
    d = ImageDraw.Draw(img)
    wall = tuple(int(0.6 * r + 0.4 * g) for r, g in zip(roof, (200, 190, 170)))
    x0, x1, top = rng.uniform(-0.1, 0.2) * w, rng.uniform(0.8, 1.1) * w, rng.uniform(0.1, 0.35) * h
    d.rectangle([x0, top, x1, h * 0.85], fill=wall)
    for y in np.arange(top + 6, h * 0.8, 14):
        for x in np.arange(x0 + 6, x1 - 8, 14):
            d.rectangle([x, y, x + 7, y + 8], fill=(50, 60, 80))
    d.rectangle([0, h * 0.85, w, h], fill=(80, 80, 80))
    return _camera_look(img, cam, rng)
