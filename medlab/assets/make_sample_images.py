"""Write synthetic "radiograph-like" sample images with captions (``sample/images/``, ``sample/image_captions*.jsonl``).

Each 64x64 grayscale image is a dark field with one bright opacity whose zone (upper/lower x left/right),
size (small/large) and shape (round/elongated) the caption states, so text -> image retrieval is
learnable by a tiny vision-language model in a few CPU steps. Deterministic (fixed seed, no network)::

    python -m medlab.assets.make_sample_images
"""

from __future__ import annotations

import json
import random
from itertools import product
from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
SEED = 11
PER_CLASS = 4  # 3 train + 1 val per (zone, size, shape)


def _draw(zone: tuple[str, str], size: str, shape: str, rng: random.Random):
    from PIL import Image, ImageDraw, ImageFilter

    img = Image.new("L", (64, 64), color=rng.randint(10, 40))
    d = ImageDraw.Draw(img)
    cy = (16 if zone[0] == "upper" else 46) + rng.randint(-3, 3)
    cx = (16 if zone[1] == "left" else 46) + rng.randint(-3, 3)
    r = (5 if size == "small" else 11) + rng.randint(-1, 1)
    rx, ry = (r, r) if shape == "round" else (r, max(2, r // 3))
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=rng.randint(190, 250))
    return img.filter(ImageFilter.GaussianBlur(0.8))


def main() -> None:
    rng = random.Random(SEED)
    out_dir = SAMPLE_DIR / "images"
    out_dir.mkdir(parents=True, exist_ok=True)
    train, val = [], []
    classes = list(product(("upper", "lower"), ("left", "right"), ("small", "large"), ("round", "elongated")))
    for n, (v, h, size, shape) in enumerate(classes):
        for i in range(PER_CLASS):
            name = f"img_{n:02d}_{i}.png"
            _draw((v, h), size, shape, rng).save(out_dir / name, optimize=True)
            caption = f"A {size} {shape} opacity in the {v} {h} zone."
            (val if i == PER_CLASS - 1 else train).append({"image": f"images/{name}", "caption": caption,
                                                            "zone": f"{v} {h}", "size": size, "shape": shape})
    for fname, rows in (("image_captions.jsonl", train), ("val_image_captions.jsonl", val)):
        with open(SAMPLE_DIR / fname, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
