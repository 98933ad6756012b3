"""The vectors and spaces tables: each image's vector per model, the space it lives in, and
each space's version (bumped by every write, so indexes know when they are stale)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Iterator, cast

import numpy as np

from .codec import decode_vectors, encode_vectors
from .db import Repo, id_chunks
from .pg import write_vectors as pg_write_vectors


@dataclass
class SpacePhoto:
    id: int
    sha256: str
    ext: str
    album: str | None


@dataclass
class ServingChunk:
    ids: np.ndarray
    vectors: np.ndarray
    models: list[str]
    seqs: np.ndarray


class VectorsRepo(Repo):
    # -- vectors --------------------------------------------------------------------------
    def space_members(self, space: str, exclude_model: str | None = None) -> np.ndarray:
        """Ids of the images served in `space`, optionally leaving out those whose serving vector
        was computed by `exclude_model` (a candidate model must not be checked against itself)."""
        rows = self.db.execute(
            "SELECT v.image_id, v.model FROM vectors v JOIN ("
            " SELECT image_id, max(seq) AS newest FROM vectors WHERE space = ? GROUP BY image_id"
            ") m ON v.image_id = m.image_id AND v.seq = m.newest WHERE v.space = ? "
            "ORDER BY v.image_id", [space, space]).fetchall()
        return np.array([i for i, m in rows if m != exclude_model], dtype=np.int64)

    def space_photos(self, space: str) -> list["SpacePhoto"]:
        """Every image with a vector in `space`: id, sha256, file extension, album."""
        rows = self.db.execute(
            "SELECT id, sha256, ext, album FROM images WHERE id IN "
            "(SELECT image_id FROM vectors WHERE space = ?) ORDER BY id", [space]).fetchall()
        return [SpacePhoto(*r) for r in rows]

    def serving_vectors_of(self, image_ids: Iterable[int], space: str) -> dict[int, np.ndarray]:
        """The serving (newest) vector in `space` of each of these images that has one."""
        newest: dict[int, tuple[int, bytes]] = {}
        for chunk, marks in id_chunks(image_ids):
            # no ORDER BY: it would make SQLite walk the (space, seq) index over the whole space
            for i, seq, blob in self.db.execute(
                    f"SELECT image_id, seq, vector FROM vectors WHERE space = ? AND image_id IN "
                    f"({marks})", [space, *chunk]):
                if i not in newest or seq > newest[i][0]:
                    newest[i] = (seq, blob)
        if not newest:
            return {}
        ids = list(newest)
        dim = cast(int, self.space_dim(space))  # known: the space holds vectors
        vectors = decode_vectors([newest[i][1] for i in ids], dim)
        return dict(zip(ids, vectors))

    def put_vectors(self, image_ids: list[int], vectors: np.ndarray, model: str, space: str,
                    origin: str | None = None, uncertainty: np.ndarray | None = None) -> None:
        """Store vectors (call inside a transaction); bumps the space's version. `origin`: None
        when embedded from the photo, 'head' / 'map' when transformed from a stored vector."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        dim = self.space_dim(space)
        if dim is not None and dim != vectors.shape[1]:
            raise ValueError(f"space {space!r} holds {dim}-d vectors, not {vectors.shape[1]}-d")
        write = pg_write_vectors if self.conn.dialect == "postgresql" else self._write_vectors
        write(self.db, space, vectors.shape[1], [int(i) for i in image_ids], model,
              encode_vectors(vectors), time.time(), origin,
              None if uncertainty is None else [float(u) for u in uncertainty])

    @staticmethod
    def _write_vectors(db, space: str, dim: int, image_ids: list[int], model: str,
                       blobs: list[bytes], now: float, origin: str | None,
                       uncertainty: list[float] | None) -> None:
        """put_vectors' writes (SQLite; PostgreSQL's are one statement: pg.write_vectors)."""
        # every write of a space gets the next sequence number (the row stays locked until the
        # transaction ends, so two writers never share one)
        seq = db.conn.execute(
            "INSERT INTO spaces (space, dim, version) VALUES (?, ?, 1) "
            "ON CONFLICT(space) DO UPDATE SET version = spaces.version + 1 RETURNING version",
            [space, dim],
        ).fetchone()[0]
        unc = [None] * len(image_ids) if uncertainty is None else uncertainty
        rows = [(i, model, space, dim, blob, now, seq, origin, u)
                for i, blob, u in zip(image_ids, blobs, unc)]
        for s in range(0, len(rows), 1000):  # one statement per 1,000 rows
            part = rows[s:s + 1000]
            db.conn.execute(
                "INSERT INTO vectors (image_id, model, space, dim, vector, created_at, seq, "
                "origin, uncertainty) VALUES "
                + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(part))
                + " ON CONFLICT(image_id, model) DO UPDATE SET space = excluded.space, "
                "dim = excluded.dim, vector = excluded.vector, created_at = excluded.created_at, "
                "seq = excluded.seq, origin = excluded.origin, uncertainty = excluded.uncertainty",
                [x for row in part for x in row])

    def space_version(self, space: str) -> int:
        row = self.db.execute("SELECT version FROM spaces WHERE space = ?", [space]).fetchone()
        return row[0] if row else 0

    def space_dim(self, space: str) -> int | None:
        dims = self.__dict__.setdefault("_space_dims", {})  # a space's dimension never changes
        if space not in dims:
            row = self.db.execute("SELECT dim FROM spaces WHERE space = ?", [space]).fetchone()
            if row is None:
                return None
            dims[space] = row[0]
        return dims[space]

    def serving_vectors(self, space: str, after_seq: int = 0, batch: int = 20000
                        ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) of the vector that serves each image in `space`: its newest one.

        With `after_seq`, only images whose serving vector was written after that version."""
        for chunk in self.serving_rows(space, after_seq, batch):
            yield chunk.ids, chunk.vectors

    def serving_rows(self, space: str, after_seq: int = 0, batch: int = 20000
                     ) -> Iterator["ServingChunk"]:
        """Like serving_vectors, with the model and seq of each vector (for external stores)."""
        dim = self.space_dim(space)
        if dim is None:
            return
        # Each write of a space has its own seq and names an image at most once, so
        # (image_id, max seq) identifies one row.
        for rows in self.conn.stream(
            "SELECT v.image_id, v.vector, v.model, v.seq FROM vectors v JOIN ("
            " SELECT image_id, max(seq) AS newest FROM vectors WHERE space = ? GROUP BY image_id"
            ") m ON v.image_id = m.image_id AND v.seq = m.newest "
            "WHERE v.space = ? AND m.newest > ? ORDER BY v.image_id",
                [space, space, after_seq], batch):
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vecs = decode_vectors([r[1] for r in rows], dim)
            yield ServingChunk(ids, vecs, [r[2] for r in rows],
                               np.fromiter((r[3] for r in rows), dtype=np.int64, count=len(rows)))

    def has_vectors(self) -> bool:
        return self.db.execute("SELECT EXISTS (SELECT 1 FROM vectors)").fetchone()[0] == 1

    def count_served(self, space: str) -> int:
        """How many images have a vector in `space` (each is served exactly once)."""
        return self.db.execute("SELECT count(DISTINCT image_id) FROM vectors WHERE space = ?",
                               [space]).fetchone()[0]

    def vectors_by_model(self, model: str, image_ids: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        sql = "SELECT image_id, vector, dim FROM vectors WHERE model = ?"
        params: list = [model]
        if image_ids is not None:
            sql += f" AND image_id IN ({','.join('?' * len(image_ids))})"
            params += [int(i) for i in image_ids]
        rows = self.db.execute(sql + " ORDER BY image_id", params).fetchall()
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        return ids, decode_vectors([r[1] for r in rows], rows[0][2])

    def count_vectors(self, model: str, space: str) -> int:
        return self.db.execute("SELECT count(*) FROM vectors WHERE model = ? AND space = ?",
                               [model, space]).fetchone()[0]

    def vector_counts(self) -> list[dict]:
        """Per (space, model): vectors, and how many of them were transformed from stored
        vectors rather than embedded from the photos."""
        rows = self.db.execute(
            "SELECT space, model, count(*), count(origin) FROM vectors GROUP BY space, model "
            "ORDER BY space, model").fetchall()
        return [{"space": s, "model": m, "vectors": n, "transformed": t, "embedded": n - t}
                for s, m, n, t in rows]

    def images_to_transform(self, source: str, target: str) -> list[int]:
        """Images served in `source` with no vector in `target` yet, in id order."""
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT image_id FROM vectors WHERE space = ? AND image_id NOT IN "
            "(SELECT image_id FROM vectors WHERE space = ?) ORDER BY image_id", [source, target])]

    def serving_origins(self, space: str, image_ids: Iterable[int]) -> dict[int, tuple]:
        """(model, origin) of the serving vector in `space` of each of these images."""
        newest: dict[int, tuple] = {}
        for chunk, marks in id_chunks(image_ids):
            # newest per image in Python: ORDER BY seq would scan the whole space
            for i, seq, model, origin in self.db.execute(
                    f"SELECT image_id, seq, model, origin FROM vectors WHERE space = ? AND "
                    f"image_id IN ({marks})", [space, *chunk]):
                if i not in newest or seq > newest[i][0]:
                    newest[i] = (seq, model, origin)
        return {i: v[1:] for i, v in newest.items()}

    def transformed_vectors(self, space: str, model: str) -> list[tuple[int, float]]:
        """(image id, when the image was added) of `model`'s vectors in `space` that a learned
        map made, most uncertain (largest expected residual) first."""
        return self.db.execute(
            "SELECT v.image_id, i.added_at FROM vectors v JOIN images i ON i.id = v.image_id "
            "WHERE v.space = ? AND v.model = ? AND v.origin = 'map' "
            "ORDER BY v.uncertainty DESC, v.image_id", [space, model]).fetchall()

    def serving_model_of(self, image_ids: list[int], space: str) -> dict[int, str]:
        """The model whose vector serves each of these images in `space`."""
        return {i: model for i, (model, _) in self.serving_origins(space, image_ids).items()}
