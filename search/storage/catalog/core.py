"""`Catalog`: the writer's connection (db.py) with every table group's repository mixed in."""
from __future__ import annotations

from .images import ImagesRepo
from .logs import LogsRepo
from .models import ModelsRepo
from .state import StateRepo
from .vectors import VectorsRepo


class Catalog(ImagesRepo, VectorsRepo, ModelsRepo, StateRepo, LogsRepo):
    """The gallery's catalog. Every repository derives from `Db` (connection, schema,
    transactions), so `Db` comes last in the method resolution order; `StateRepo` after
    `ModelsRepo`, which builds on it."""
