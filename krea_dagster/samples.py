"""A sample product table with reference photos, for a first workflow in a new project.

``write_sample_products(folder)`` writes ``products.csv`` (``batch, sku, name, color, photo``:
two batches of two products) and a small PNG photo per product under ``photos/``, drawn with
Pillow (a flat shape in the product's colour), so the README's workflow and the workflow
component's scaffold run as written with no file of your own. ``krea-dagster sample-products
DIR`` does the same from the command line. Existing files are left as they are.
"""

import csv
from pathlib import Path

__all__ = ["SAMPLE_PRODUCTS", "write_sample_products"]

#: (batch, sku, name, colour name, RGB)
SAMPLE_PRODUCTS: tuple[tuple[str, str, str, str, tuple[int, int, int]], ...] = (
    ("spring", "SKU-001", "sneaker", "red", (200, 40, 40)),
    ("spring", "SKU-002", "backpack", "navy blue", (30, 40, 110)),
    ("autumn", "SKU-003", "ceramic mug", "sage green", (140, 170, 130)),
    ("autumn", "SKU-004", "desk lamp", "brass", (180, 150, 60)),
)
PHOTO_SIZE = 256


def write_sample_products(folder: str | Path, *, batch: str | None = None) -> Path:
    """Write the sample table and its photos into ``folder``; return the table's path.

    With ``batch``, only that batch's products, in ``<batch>.csv`` without a batch column (a
    prompt-file folder's batch file); else every product in ``products.csv``.
    """
    from PIL import Image, ImageDraw

    root = Path(folder)
    photos = root / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    rows = [row for row in SAMPLE_PRODUCTS if batch is None or row[0] == batch]
    if not rows:
        known = sorted({row[0] for row in SAMPLE_PRODUCTS})
        raise ValueError(f"no sample batch {batch!r}; the samples have {', '.join(known)}")
    for _batch, sku, _name, _colour, rgb in rows:
        target = photos / f"{sku.lower()}.png"
        if target.exists():
            continue
        image = Image.new("RGB", (PHOTO_SIZE, PHOTO_SIZE), (245, 245, 240))
        draw = ImageDraw.Draw(image)
        draw.rounded_rectangle((48, 64, 208, 200), radius=24, fill=rgb)
        draw.ellipse((96, 24, 160, 88), fill=rgb)
        image.save(target, format="PNG")
    table = root / (f"{batch}.csv" if batch else "products.csv")
    if not table.exists():
        with table.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            header = ["sku", "name", "color", "photo"]
            writer.writerow(header if batch else ["batch", *header])
            for row_batch, sku, name, colour, _rgb in rows:
                values = [sku, name, colour, f"photos/{sku.lower()}.png"]
                writer.writerow(values if batch else [row_batch, *values])
    return table
