"""The images table: one row per unique image (sha256 of its bytes), and its album."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .db import Repo, id_chunks


@dataclass
class ImageRow:
    id: int
    sha256: str
    name: str
    ext: str
    bytes: int
    width: int
    height: int
    format: str
    source: str
    added_at: float
    album: str | None = None


IMAGE_COLUMNS = ("id", "sha256", "name", "ext", "bytes", "width", "height", "format", "source",
                 "added_at", "album")  # the order of `SELECT *` (ImageRow's fields)


class ImagesRepo(Repo):
    # -- images ---------------------------------------------------------------------------
    def image_ids_by_sha_prefix(self, prefix: str, limit: int = 2) -> list[int]:
        return [r[0] for r in self.db.execute(
            "SELECT id FROM images WHERE sha256 LIKE ? LIMIT ?", [prefix.lower() + "%", limit])]

    def images_missing_in_space(self, space: str) -> list[int]:
        """Ids of images with no vector in `space`, in id order."""
        return [r[0] for r in self.db.execute(
            "SELECT id FROM images WHERE id NOT IN (SELECT image_id FROM vectors WHERE space = ?) "
            "ORDER BY id", [space])]

    def images_without_model(self, space: str, model: str) -> list[tuple[int, float]]:
        """(id, added_at) of images served in `space` that have no vector by `model`."""
        return self.db.execute(
            "SELECT id, added_at FROM images WHERE id IN (SELECT image_id FROM vectors WHERE space = ?)"
            " AND id NOT IN (SELECT image_id FROM vectors WHERE model = ?) ORDER BY id",
            [space, model]).fetchall()

    def image_id(self, sha256: str) -> int | None:
        row = self.db.execute("SELECT id FROM images WHERE sha256 = ?", [sha256]).fetchone()
        return row[0] if row else None

    def add_image(self, row: dict) -> int:
        existing = self.image_id(row["sha256"])
        if existing is not None:
            return existing
        columns = [c for c in IMAGE_COLUMNS if c in row]
        return self.db.execute(
            f"INSERT INTO images ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
            "RETURNING id", [row[c] for c in columns]).fetchone()[0]

    def images(self, ids: Iterable[int]) -> dict[int, ImageRow]:
        out: dict[int, ImageRow] = {}
        for chunk, marks in id_chunks(ids):
            cursor = self.db.execute(f"SELECT * FROM images WHERE id IN ({marks})", chunk)
            out.update((r[0], ImageRow(*r)) for r in cursor.fetchall())
        return out

    def hit_rows(self, ids: Iterable[int], space: str) -> tuple[dict[int, ImageRow], dict[int, str]]:
        """Image rows of search hits and the model whose vector served each, in one query."""
        ids = [int(i) for i in ids]
        if not ids:
            return {}, {}
        marks = ",".join("?" * len(ids))
        cursor = self.db.execute(
            f"SELECT i.*, (SELECT v.model FROM vectors v WHERE v.image_id = i.id AND v.space = ? "
            f"ORDER BY v.seq DESC LIMIT 1) FROM images i WHERE i.id IN ({marks})", [space, *ids])
        rows, models = {}, {}
        for r in cursor.fetchall():
            rows[r[0]] = ImageRow(*r[:-1])
            models[r[0]] = r[-1] or "?"
        return rows, models

    def list_images(self, offset: int = 0, limit: int = 50, album: str | None = None) -> list[ImageRow]:
        where, params = ("WHERE album = ? ", [album]) if album is not None else ("", [])
        cursor = self.db.execute(f"SELECT * FROM images {where}ORDER BY id LIMIT ? OFFSET ?",
                                 [*params, limit, offset])
        return [ImageRow(*r) for r in cursor.fetchall()]

    def count_images(self, album: str | None = None) -> int:
        if album is not None:
            return self.db.execute("SELECT count(*) FROM images WHERE album = ?", [album]).fetchone()[0]
        return self.db.execute("SELECT count(*) FROM images").fetchone()[0]

    # -- albums ---------------------------------------------------------------------------
    def albums(self) -> list[dict]:
        rows = self.db.execute(
            "SELECT album, count(*) FROM images GROUP BY album ORDER BY album IS NULL, album").fetchall()
        return [{"album": a, "images": n} for a, n in rows]

    def album_labels(self, ids: Iterable[int] | None = None) -> dict[int, str | None]:
        if ids is None:
            return dict(self.db.execute("SELECT id, album FROM images").fetchall())
        out: dict[int, str | None] = {}
        for chunk, marks in id_chunks(ids):
            out.update(self.db.execute(f"SELECT id, album FROM images WHERE id IN ({marks})", chunk))
        return out

    def set_album(self, ids: Iterable[int], album: str | None) -> int:
        """Put images into `album` (None: no album). Returns how many rows changed."""
        changed = 0
        with self.conn.transaction():
            for chunk, marks in id_chunks(ids):
                changed += self.db.conn.execute(
                    f"UPDATE images SET album = ? WHERE id IN ({marks})", [album, *chunk]).rowcount
        return changed

    def set_album_by_sha(self, shas: Iterable[str], album: str | None) -> int:
        shas = list(shas)
        with self.conn.transaction():
            return sum(self.db.conn.execute("UPDATE images SET album = ? WHERE sha256 = ?",
                                            [album, s]).rowcount for s in shas)

    def rename_album(self, old: str, new: str | None) -> int:
        with self.conn.transaction():
            return self.db.conn.execute("UPDATE images SET album = ? WHERE album = ?",
                                        [new, old]).rowcount
